// Command kstatus-check prints what kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status), the
// library Flux and other GitOps tools judge health with, says about Kubernetes objects.
//
// It reads JSON from stdin: one object, a JSON array of objects, or a List ("items"), as
// `kubectl get -o json` prints them; `null` stands for an object that does not exist. For each
// object it writes one line of JSON: {"status", "message", "conditions"} from status.Compute,
// or {"error"} where Compute returns an error.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Status     string             `json:"status,omitempty"`
	Message    string             `json:"message,omitempty"`
	Conditions []status.Condition `json:"conditions"`
	Error      string             `json:"error,omitempty"`
}

func compute(obj map[string]interface{}) verdict {
	if obj == nil {
		return verdict{Status: string(status.NotFoundStatus), Message: "Resource not found", Conditions: []status.Condition{}}
	}
	res, err := status.Compute(&unstructured.Unstructured{Object: obj})
	if err != nil {
		return verdict{Error: err.Error(), Conditions: []status.Condition{}}
	}
	conds := res.Conditions
	if conds == nil {
		conds = []status.Condition{}
	}
	return verdict{Status: string(res.Status), Message: res.Message, Conditions: conds}
}

func run(in io.Reader, out io.Writer) error {
	dec := json.NewDecoder(in)
	dec.UseNumber() // integers stay integers, as the API server sent them
	var doc interface{}
	if err := dec.Decode(&doc); err != nil {
		return fmt.Errorf("reading JSON from stdin: %w", err)
	}
	var items []interface{}
	switch d := doc.(type) {
	case []interface{}:
		items = d
	case map[string]interface{}:
		if list, ok := d["items"].([]interface{}); ok && d["kind"] != nil && len(d) <= 4 {
			items = list
		} else {
			items = []interface{}{d}
		}
	case nil:
		items = []interface{}{nil}
	default:
		return fmt.Errorf("stdin holds %T, not an object or a list", doc)
	}
	w := bufio.NewWriter(out)
	enc := json.NewEncoder(w)
	for i, item := range items {
		obj, ok := item.(map[string]interface{})
		if item != nil && !ok {
			return fmt.Errorf("item %d is %T, not an object", i, item)
		}
		if err := enc.Encode(compute(normalize(obj))); err != nil {
			return err
		}
	}
	return w.Flush()
}

// normalize turns json.Number into int64 or float64, the types unstructured objects hold.
func normalize(obj map[string]interface{}) map[string]interface{} {
	if obj == nil {
		return nil
	}
	v, _ := normalizeValue(obj).(map[string]interface{})
	return v
}

func normalizeValue(v interface{}) interface{} {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]interface{}:
		for k, e := range x {
			x[k] = normalizeValue(e)
		}
		return x
	case []interface{}:
		for i, e := range x {
			x[i] = normalizeValue(e)
		}
		return x
	default:
		return v
	}
}

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: kstatus-check < objects.json")
		os.Exit(2)
	}
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus-check:", err)
		os.Exit(1)
	}
}
