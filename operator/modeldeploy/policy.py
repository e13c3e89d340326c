"""What a ModelDeployment may ask for, as the operator's settings allow. Pure.

Whoever may create a ModelDeployment in a namespace gets pods made for them by the operator.
These rules keep those pods to what any namespace user may have: images from the allowed
repositories, no system-* priority (which preempts other tenants' pods), no toleration of every
taint, launcher flags from tgi.SAFE_FLAGS only, and (if set) token Secrets from a list. A
violation is a SpecError naming the field: Stalled, an Event, and no child changed.

The chart ships the same rules as a ValidatingAdmissionPolicy (templates/admissionpolicy.yaml),
so `kubectl apply` refuses them too; tests/integration/test_policy.py holds the two together.
"""

from __future__ import annotations

import json

from modeldeploy import tgi
from modeldeploy.api import ModelDeploymentSpec
from modeldeploy.errors import SpecError
from modeldeploy.settings import Settings

REASON = "NotAllowed"
SYSTEM_PRIORITY_PREFIX = "system-"


def image_repository(image: str) -> str:
    """The repository of an image reference: without its digest and tag."""
    name = image.partition("@")[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def image_allowed(image: str, repositories: tuple[str, ...], default_image: str = "") -> bool:
    if not image or image == default_image or "*" in repositories:
        return True
    repo = image_repository(image)
    return any(repo == r or (r.endswith("/") and repo.startswith(r)) for r in repositories)


def priority_class_allowed(name: str, allowed: tuple[str, ...]) -> bool:
    if not name:
        return True
    return name in allowed if allowed else not name.startswith(SYSTEM_PRIORITY_PREFIX)


def _refuse(field: str, message: str) -> SpecError:
    return SpecError(field, message, reason=REASON)


def check(spec: ModelDeploymentSpec, settings: Settings) -> None:
    """Raise SpecError (reason NotAllowed, or InvalidSpec for extraArgs) on the first field the
    operator's policy does not allow."""
    image = spec.engine.image
    if not image_allowed(image, settings.allowed_image_repositories, settings.default_image):
        allowed = ", ".join(settings.allowed_image_repositories) or "none but the default image"
        raise _refuse(
            "spec.engine.image",
            f"image {image} is not from an allowed repository ({allowed}); leave image empty for the "
            f"default ({settings.default_image}) or ask the cluster's operator admin to allow "
            f"{image_repository(image)}",
        )
    pc = spec.scheduling.priority_class_name
    if not priority_class_allowed(pc, settings.allowed_priority_classes):
        allowed = (
            ", ".join(settings.allowed_priority_classes)
            if settings.allowed_priority_classes
            else f"any not starting with {SYSTEM_PRIORITY_PREFIX}"
        )
        raise _refuse(
            "spec.scheduling.priorityClassName",
            f"priority class {pc} is not allowed for models (allowed: {allowed}): a system class "
            "would let the model's pods preempt other tenants' pods",
        )
    if not settings.allow_tolerate_all:
        for i, t in enumerate(spec.scheduling.tolerations):
            if not t.key and t.operator == "Exists":
                raise _refuse(
                    f"spec.scheduling.tolerations[{i}]",
                    "a toleration with operator Exists and no key tolerates every taint (it would "
                    "schedule onto nodes reserved for others); name the taint's key",
                )
    ref = spec.model.token_secret_ref
    if ref is not None and settings.allowed_token_secrets and ref.name not in settings.allowed_token_secrets:
        raise _refuse(
            "spec.model.tokenSecretRef.name",
            f"Secret {ref.name} is not one models may read (allowed: "
            f"{', '.join(settings.allowed_token_secrets)})",
        )
    tgi.parse_extra_args(spec.engine.extra_args)


# ---- the same rules for the chart's ValidatingAdmissionPolicy -------------------------------

FLAGS_TEMPLATE = "charts/modeldeploy/templates/_launcher_flags.tpl"


def chart_flags_template() -> str:
    """The chart's copy of the extraArgs rules, as CEL map literals (JSON objects): the value
    shape of each safe flag ("" for a switch), what it takes, and why every other launcher flag
    is refused. hack/render-install.sh writes it; tests/unit/test_chart.py checks it is current."""
    shapes = {n: (s.pattern if s else "") for n, s in sorted(tgi.SAFE_FLAGS.items())}
    says = {n: s.says for n, s in sorted(tgi.SAFE_FLAGS.items()) if s}
    why = {n: tgi.refusal(n) for n in sorted(tgi.KNOWN_FLAGS - set(tgi.SAFE_FLAGS))}
    out = [
        "{{/* Generated from operator/modeldeploy/tgi.py by hack/render-install.sh. Do not edit. */}}",
    ]
    for name, table in (("Shapes", shapes), ("Says", says), ("Refusals", why)):
        out += [f'{{{{- define "modeldeploy.launcherFlag{name}" -}}}}', json.dumps(table), "{{- end }}"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(chart_flags_template(), end="")
