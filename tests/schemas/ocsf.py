"""Validates OCSF Detection Findings, one JSON object per line on stdin,
against py-ocsf-models (pydantic models of the published OCSF schema) with
unknown fields refused everywhere, as the schema does. Exits 1 on the first
invalid finding and prints why; prints "N findings valid" otherwise.
tests/alerting.rs runs it on what an `ocsf` webhook receiver was sent."""
import importlib
import inspect
import json
import pkgutil
import sys

import py_ocsf_models
from pydantic import BaseModel, ValidationError

modules = [importlib.import_module(m.name)
           for m in pkgutil.walk_packages(py_ocsf_models.__path__, "py_ocsf_models.")]
models = {c for m in modules for _, c in inspect.getmembers(m, inspect.isclass)
          if issubclass(c, BaseModel) and c.__module__.startswith("py_ocsf_models")}
for model in models:
    model.model_config["extra"] = "forbid"
# Nested models are inlined when a model is built: rebuild until every
# model holds its nested models' strict form.
for _ in range(3):
    for model in models:
        model.model_rebuild(force=True)

from py_ocsf_models.events.findings.detection_finding import DetectionFinding  # noqa: E402

n = 0
for line in sys.stdin:
    if not line.strip():
        continue
    finding = json.loads(line)
    try:
        DetectionFinding.model_validate(finding)
    except ValidationError as e:
        print(f"finding {n}: {e}", file=sys.stderr)
        sys.exit(1)
    if finding.get("class_uid") != 2004 or finding.get("type_uid") != 2004 * 100 + finding.get("activity_id", -1):
        print(f"finding {n}: not a Detection Finding: class_uid/type_uid", file=sys.stderr)
        sys.exit(1)
    n += 1
print(f"{n} findings valid")
