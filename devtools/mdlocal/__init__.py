"""Development tools for modeldeploy that never ship in the operator's wheel or image: the local
control-plane harness (`mdlocal.localcluster`) used by the tests, the demo and the benchmark.

Importable with `devtools` on the path (pytest's `pythonpath` setting; the Makefile exports
PYTHONPATH for its targets): `PYTHONPATH=devtools .venv/bin/python -m mdlocal.localcluster up DIR`.
"""
