{{/* Chart name, overridable. */}}
{{- define "modeldeploy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of the release's namespaced objects. */}}
{{- define "modeldeploy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the release's cluster-scoped objects: the release namespace is part of it, so two
namespaced-mode installs with the same release name in different namespaces do not collide.
*/}}
{{- define "modeldeploy.clusterName" -}}
{{- printf "%s-%s" (include "modeldeploy.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "modeldeploy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modeldeploy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modeldeploy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "modeldeploy.labels" -}}
helm.sh/chart: {{ include "modeldeploy.chart" . }}
{{ include "modeldeploy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: modeldeploy
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "modeldeploy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modeldeploy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "modeldeploy.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if or (eq $tag "latest") (hasPrefix "latest@" $tag) }}
{{- fail "image.tag must not be \"latest\": pin a version so upgrades and rollbacks are reproducible" }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* Checks the schema cannot express. Included by every template that depends on them. */}}
{{- define "modeldeploy.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.peering.enabled) }}
{{- fail (printf "replicas=%d needs peering.enabled=true: without kopf peering every replica reconciles the same ModelDeployments at once. Set peering.enabled=true, or replicas=1." (int .Values.replicas)) }}
{{- end }}
{{- if and .Values.prefetchProgress.fromLogs (not .Values.watchNamespaces) (not .Values.prefetchProgress.namespaces) }}
{{- fail "prefetchProgress.fromLogs in cluster-wide mode needs prefetchProgress.namespaces: the namespaces whose prefetch pod logs the operator may read" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled=true needs metrics.enabled=true (the ServiceMonitor selects the metrics Service)" }}
{{- end }}
{{- end }}

{{/*
RBAC rules for the namespaced resources the operator reads and writes. The same list goes
into the cluster-wide ClusterRole and into each watched namespace's Role.
*/}}
{{- define "modeldeploy.namespacedRules" -}}
# ModelDeployments: watched; patched by kopf for its progress annotations.
- apiGroups: ["modeldeploy.dev"]
  resources: ["modeldeployments"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["modeldeploy.dev"]
  resources: ["modeldeployments/status"]
  verbs: ["get", "patch"]
# Children, written with server-side apply (patch); create is kept for clients that fall back to it.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Pods: read for status causes (Unschedulable, CrashLoopBackOff, ...).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# ConfigMaps: read (one by name, per probe run) for probe sets a policy team shares
# between models (spec.probes.configMapRef).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get"]
# Events: posted by the operator and kopf; listed by the weight cache to report why its
# PersistentVolumeClaim is not bound.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch", "list"]
{{- end }}

{{/*
Cluster-scoped reads every mode needs: GPU nodes, and StorageClasses (the weight cache checks
that its claim's class exists, or that there is a default one).
*/}}
{{- define "modeldeploy.clusterRules" -}}
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["storage.k8s.io"]
  resources: ["storageclasses"]
  verbs: ["get", "list"]
{{- end }}

{{/* The operator's command-line arguments. */}}
{{- define "modeldeploy.args" -}}
- run
- --liveness=http://0.0.0.0:8080/healthz
- --metrics-port=8081
- --log-format={{ .Values.logFormat }}
- --log-level={{ .Values.logLevel }}
- --prober={{ .Values.probes.mode }}
{{- range .Values.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- if .Values.peering.enabled }}
- --peering
- --peering-lifetime={{ int .Values.peering.lifetimeSeconds }}
{{- end }}
{{- end }}

{{/* Namespaces whose prefetch pod logs the operator reads, comma-separated ("" when off). */}}
{{- define "modeldeploy.prefetchLogNamespaces" -}}
{{- if .Values.prefetchProgress.fromLogs }}
{{- join "," (default .Values.watchNamespaces .Values.prefetchProgress.namespaces) }}
{{- end }}
{{- end }}
