"""Checks the built wheel and sdist: the type marker, every module, the extras."""

import sys
import tarfile
import zipfile
from pathlib import Path

MODULES = ["__init__", "client", "stream", "seed", "_json", "langchain", "pydantic_ai", "openai_agents"]
EXTRAS = ["langchain", "pydantic-ai", "openai-agents"]

dist = Path(sys.argv[1])
wheels, sdists = list(dist.glob("agentwire-*.whl")), list(dist.glob("agentwire-*.tar.gz"))
assert len(wheels) == 1 and len(sdists) == 1, f"one wheel and one sdist, found {wheels} {sdists}"
names = zipfile.ZipFile(wheels[0]).namelist()
for wanted in ["agentwire/py.typed", *(f"agentwire/{m}.py" for m in MODULES)]:
    assert wanted in names, f"{wanted} is missing from {wheels[0].name}"
metadata = next(zipfile.ZipFile(wheels[0]).read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
for extra in EXTRAS:
    assert f"Provides-Extra: {extra}" in metadata, f"the wheel does not declare the extra {extra}"
members = tarfile.open(sdists[0]).getnames()
assert any(m.endswith("src/agentwire/py.typed") for m in members), "py.typed is missing from the sdist"
print(f"{wheels[0].name} and {sdists[0].name}: py.typed, {len(MODULES)} modules, extras {', '.join(EXTRAS)}")
