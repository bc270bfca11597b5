"""Registry packaging: pyproject.toml ([project] + [tool.comfy] as the Comfy Registry reads them), LICENSE,
requirements.txt, CHANGELOG.md, and every file that pyproject, README or the web extension points at.

Pure file checks: no ComfyUI needed (where one is found, its requirements.txt is read as text, nothing imported).
"""
from __future__ import annotations

import os
import re
import subprocess
import tomllib
import xml.etree.ElementTree as ET

import pytest

from testkit.comfyui_env import find_comfyui

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What a ComfyUI install already has (its requirements.txt, 0.3.x): a custom node must not pin or reinstall these.
COMFYUI_SHIPS = {
    "torch", "torchvision", "torchaudio", "torchsde", "numpy", "einops", "transformers", "tokenizers",
    "sentencepiece", "safetensors", "aiohttp", "yarl", "pyyaml", "pillow", "scipy", "tqdm", "psutil", "alembic",
    "sqlalchemy", "av", "kornia", "spandrel", "pydantic", "pydantic-settings", "comfyui-frontend-package",
    "comfyui-workflow-templates", "comfyui-embedded-docs",
}
# Top-level folders of this repository: a backticked README path starting with one of them must exist.
REPO_DIRS = ("scripts", "web", "example_workflows", "tests", "docs", "nodes", "ip_adapter_core", "bench", ".ci",
             "testkit", "migration")


def _read(rel: str) -> str:
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _name(requirement: str) -> str:
    """'Pillow>=9; python_version > "3"' -> 'pillow' (PEP 503 normalised)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_lines(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def test_project_section(pyproject):
    project = pyproject["project"]
    # registry node id: < 100 characters, letters / digits / - _ ., starts with a letter, no doubled specials
    assert re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?![-_.]))*", project["name"]) and len(project["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]), "registry versions are X.Y.Z"
    assert project["description"].strip()
    assert project["license"] == {"file": "LICENSE"} and os.path.isfile(os.path.join(ROOT, "LICENSE"))
    assert project["readme"] == "README.md" and os.path.isfile(os.path.join(ROOT, "README.md"))
    assert re.fullmatch(r">=\s*3\.\d+", project["requires-python"])
    assert any(c.startswith("Operating System :: ") for c in project.get("classifiers", [])), \
        "the registry reads the supported OS from an 'Operating System ::' classifier"


def test_tool_comfy_section(pyproject):
    comfy = pyproject["tool"]["comfy"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"])
    assert comfy["DisplayName"].strip()
    spec = comfy["requires-comfyui"]
    assert re.fullmatch(r"(?:[<>=!~]=?\s*\d+(?:\.\d+)*\s*,?\s*)+", spec), spec
    assert isinstance(comfy.get("includes", []), list)


def test_icon_is_a_small_image_in_the_repository(pyproject):
    icon = pyproject["tool"]["comfy"]["Icon"]
    path = os.path.join(ROOT, icon)
    assert os.path.isfile(path), f"Icon {icon} does not exist"
    assert os.path.splitext(icon)[1].lower() in (".svg", ".png", ".jpg", ".jpeg", ".gif")
    assert os.path.getsize(path) < 100_000
    if icon.endswith(".svg"):
        svg = ET.parse(path).getroot()
        assert svg.tag.endswith("svg")
        _, _, width, height = (float(v) for v in svg.get("viewBox").split())
        assert width <= 800 and height <= 400  # the registry's icon limit


def test_license_is_the_mit_text_the_readme_names():
    text = _read("LICENSE")
    assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text
    assert "MIT (see LICENSE)" in _read("README.md")


def test_version_matches_the_top_changelog_entry(pyproject):
    entries = re.findall(r"^## (\d+\.\d+\.\d+)\b", _read("CHANGELOG.md"), flags=re.M)
    assert entries, "CHANGELOG.md has no '## X.Y.Z' entry"
    assert entries[0] == pyproject["project"]["version"], \
        f"pyproject version {pyproject['project']['version']} but the newest CHANGELOG entry is {entries[0]}"


def test_requirements_add_nothing_comfyui_ships(pyproject):
    shipped = set(COMFYUI_SHIPS)
    comfyui, _ = find_comfyui()
    if comfyui and os.path.isfile(os.path.join(comfyui, "requirements.txt")):
        with open(os.path.join(comfyui, "requirements.txt"), encoding="utf-8") as f:
            shipped |= {_name(r) for r in _requirement_lines(f.read())}
    requirements = [_name(r) for r in _requirement_lines(_read("requirements.txt"))]
    assert not set(requirements) & shipped, f"requirements.txt re-installs what ComfyUI ships: {set(requirements) & shipped}"
    # pyproject's dependencies are the same list (the registry installs those, ComfyUI-Manager requirements.txt)
    assert sorted(_name(d) for d in pyproject["project"]["dependencies"]) == sorted(requirements)
    test_only = {_name(d) for d in pyproject["project"].get("optional-dependencies", {}).get("test", [])}
    assert "pytest" in test_only and not set(requirements) & test_only


def test_every_file_the_readme_points_at_exists():
    readme = _read("README.md")
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):  # markdown links and images
        if not re.match(r"[a-z]+:|#", target) and not os.path.exists(os.path.join(ROOT, target.split("#")[0])):
            missing.append(target)
    for token in re.findall(r"`([^`\s]+)`", readme):  # backticked paths inside the repository
        if token.split("/")[0] in REPO_DIRS and "<" not in token and "*" not in token:
            if not os.path.exists(os.path.join(ROOT, token.rstrip("/"))):
                missing.append(token)
        elif re.fullmatch(r"ipadapter_\w+\.json", token):  # the example list names files in example_workflows/
            if not os.path.isfile(os.path.join(ROOT, "example_workflows", token)):
                missing.append(token)
    assert not missing, f"README.md points at files that do not exist: {missing}"
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", readme)
    big = [i for i in images if os.path.getsize(os.path.join(ROOT, i)) > 200_000]
    assert not big, f"README images over 200 kB (the registry ships them with every install): {big}"


def test_web_extension_is_shipped_dependency_free_and_described():
    init = _read("__init__.py")
    web = re.search(r'^WEB_DIRECTORY\s*=\s*"([^"]+)"', init, flags=re.M).group(1)
    assert os.path.normpath(web) == "web"
    scripts = sorted(f for f in os.listdir(os.path.join(ROOT, "web", "js")) if f.endswith(".js"))
    assert scripts, "web/js holds no extension"
    readme = _read("README.md")
    for name in scripts:
        source = _read(f"web/js/{name}")
        imports = re.findall(r'^\s*import\s.*?from\s+"([^"]+)"', source, flags=re.M)
        # only the frontend's own modules, addressed from /extensions/<pack>/js/ (three levels up to /scripts/)
        assert all(re.fullmatch(r"\.\./\.\./\.\./scripts/[a-zA-Z]+\.js", i) for i in imports), (name, imports)
        assert "registerExtension" in source
        assert f"web/js/{name}" in readme, f"README does not mention web/js/{name}"


def test_shipped_files_are_tracked_by_git():
    """The registry packs the files git tracks (plus tool.comfy.includes): the web extension, the help pages and the
    README's images must be tracked, not just present in this checkout."""
    try:
        tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True,
                                     timeout=60).stdout.splitlines())
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout (or no git): tracked files cannot be listed")
    wanted = [f"web/js/{f}" for f in os.listdir(os.path.join(ROOT, "web", "js")) if f.endswith(".js")]
    wanted += [f"web/docs/{f}" for f in os.listdir(os.path.join(ROOT, "web", "docs"))]
    wanted += re.findall(r"\]\((docs/images/[^)\s]+)\)", _read("README.md"))
    wanted += ["LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "requirements.txt", "__init__.py"]
    untracked = [f for f in wanted if f not in tracked]
    assert not untracked, f"files the pack ships but git does not track: {untracked}"
