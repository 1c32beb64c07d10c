"""The model registry: one directory per model version, and its manifest.

Layout::

    <root>/<version>/model.onnx
    <root>/<version>/manifest.json

``manifest.json`` is the contract between a model file and the server::

    {
      "format": "rtim-propensity-model/1",
      "version": "v1",                       # must equal the directory name
      "created_at": "2025-01-31T12:00:00Z",
      "model": {"type": "HistGradientBoostingClassifier", "params": {...},
                "onnx_bytes": 123456, "sha256": "<hex digest of model.onnx>"},
      "input": {"name": "features", "dtype": "float32", "shape": [null, 43]},
      "output": {"name": "probabilities", "format": "probabilities", "positive": 1},
      "features": [{"name": "attr.age", "kind": "numeric", "default": 40}, ...],
      "columns": ["attr.age", "attr.segment=young", ...],
      "training": {"source": "...", "rows": 80000, "positives_rate": 0.07,
                   "date_range": ["2025-01-06T00:00:00Z", "2025-02-05T00:00:00Z"]},
      "metrics": {"holdout": {"rows": 20000, "auc": 0.8, "logloss": 0.2, "ece": 0.004}}
    }

``features`` (see :mod:`models.learning.features`) says how the input row is built;
``columns`` is what that list expanded to when the model was trained, so a
change of encoding between server versions is caught at load time rather than
silently skewing scores. ``output.format`` is one of
:data:`models.learning.scoring.OUTPUT_FORMATS`. ``training`` and ``metrics`` are for
people and the admin API; the server does not read them.

Loading checks the manifest against the file (sha256) and the ONNX graph
(input name, dtype and width, output) and raises
:class:`~models.errors.ModelError` with a message that says what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from models.errors import ModelError, NotFound
from models.learning.features import FeatureBuilder
from models.learning.scoring import OnnxScorer, PriorScorer
from models.settings import DEMO_DIR

MANIFEST_FORMAT = "rtim-propensity-model/1"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
DEMO_REGISTRY = DEMO_DIR / "registry"

# Versions become directory names and may arrive from the admin API, so they
# are kept to a safe alphabet (no "..", no slashes).
# \Z, not $: "$" also matches before a trailing newline ("v1\n").
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def check_version_name(version: str) -> str:
    """Return ``version`` or raise :class:`ModelError` if it is not a safe name."""
    if not isinstance(version, str) or not _VERSION.match(version) or ".." in version:
        raise ModelError(
            f"bad model version {version!r}; use letters, digits, '.', '_' or '-'", "version"
        )
    return version


def version_order(version: str) -> tuple:
    """Sort key that puts ``v2`` before ``v10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", version))


def file_sha256(path: str | os.PathLike[str]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse ``<directory>/manifest.json``; raise :class:`ModelError` if unreadable."""
    path = Path(directory) / MANIFEST_FILE
    # Named relative to the registry: messages reach API clients.
    name = f"{path.parent.name}/{MANIFEST_FILE}"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{name} is missing") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {name}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(manifest, dict):
        raise ModelError(f"{name} must hold a JSON object")
    return manifest


def load_scorer(
    directory: str | os.PathLike[str], group_of: Callable[[str], str] | None = None
) -> OnnxScorer:
    """Load and validate the model version stored in ``directory``."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    try:
        return _scorer_from(directory, manifest, group_of)
    except ModelError as exc:
        # Say which model is at fault; the field names the manifest part.
        where = f"model {directory.name}"
        raise ModelError(f"{where}: {exc.message}", exc.field) from None


def _scorer_from(
    directory: Path, manifest: Mapping[str, Any], group_of: Callable[[str], str] | None
) -> OnnxScorer:
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ModelError(
            f"manifest format is {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}",
            "format",
        )
    version = manifest.get("version")
    if version != directory.name:
        raise ModelError(
            f"manifest version {version!r} does not match its directory {directory.name!r}",
            "version",
        )
    features = manifest.get("features")
    if not isinstance(features, list):
        raise ModelError("manifest needs a features list", "features")
    builder = FeatureBuilder(features, group_of)
    columns = manifest.get("columns")
    if columns is not None and list(columns) != list(builder.columns):
        raise ModelError(
            "the features expand to different columns than the model was trained on "
            f"({len(builder.columns)} vs {len(columns)}); was the encoding changed?",
            "columns",
        )
    model_path = directory / MODEL_FILE
    if not model_path.is_file():
        raise ModelError(f"{MODEL_FILE} is missing", "model")
    expected = (manifest.get("model") or {}).get("sha256")
    if expected and file_sha256(model_path) != expected:
        raise ModelError(f"{MODEL_FILE} does not match the manifest's sha256", "model.sha256")
    inp = manifest.get("input") or {}
    out = manifest.get("output") or {}
    if inp.get("dtype", "float32") != "float32":
        raise ModelError("only float32 model inputs are supported", "input.dtype")
    positive = out.get("positive", 1)
    if isinstance(positive, bool) or not isinstance(positive, int) or positive < 0:
        raise ModelError("output.positive must be a class column index", "output.positive")
    shape = inp.get("shape")
    if shape is not None and (len(shape) != 2 or shape[1] != builder.n_columns):
        raise ModelError(
            f"input.shape {shape} disagrees with the {builder.n_columns} feature columns",
            "input.shape",
        )
    return OnnxScorer(
        model_path,
        builder,
        version=version,
        input_name=inp.get("name", "features"),
        output_name=out.get("name", "probabilities"),
        output_format=out.get("format", "probabilities"),
        positive=positive,
        manifest=manifest,
    )


def write_model_version(
    root: str | os.PathLike[str], version: str, model: bytes, manifest: Mapping[str, Any]
) -> Path:
    """Write ``model.onnx`` and ``manifest.json`` into ``<root>/<version>/``.

    Fills in ``format``, ``version`` and ``model.sha256``/``onnx_bytes``. The
    manifest is written last, so a half-written version has no manifest and
    :meth:`ModelRegistry.versions` does not list it.
    """
    directory = Path(root) / check_version_name(version)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_FILE).unlink(missing_ok=True)
    (directory / MODEL_FILE).write_bytes(model)
    full = {"format": MANIFEST_FORMAT, "version": version, **manifest}
    full["format"], full["version"] = MANIFEST_FORMAT, version
    full["model"] = {
        **dict(manifest.get("model") or {}),
        "onnx_bytes": len(model),
        "sha256": hashlib.sha256(model).hexdigest(),
    }
    tmp = directory / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    tmp.replace(directory / MANIFEST_FILE)
    return directory


class ModelRegistry:
    """The model versions under ``root``; each loads as an :class:`OnnxScorer`.

    ``group_of`` maps an offer id to its group, for models with ``group.*``
    features. The newest version is the highest in natural order (``v10`` >
    ``v9``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = DEMO_REGISTRY,
        group_of: Callable[[str], str] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ModelError(f"model registry {self.root} is not a directory", "root")
        self.group_of = group_of

    def versions(self) -> list[str]:
        """Version names with a manifest, oldest first."""
        found = [
            d.name
            for d in self.root.iterdir()
            if d.is_dir() and _VERSION.match(d.name) and (d / MANIFEST_FILE).is_file()
        ]
        return sorted(found, key=version_order)

    def manifest(self, version: str) -> dict[str, Any]:
        return read_manifest(self._directory(version))

    def load(self, version: str) -> OnnxScorer:
        """The validated scorer of ``version``; :class:`NotFound` if there is none."""
        return load_scorer(self._directory(version), self.group_of)

    def latest_version(self) -> str | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def latest(self) -> OnnxScorer:
        """The newest version's scorer; :class:`NotFound` when the registry is empty."""
        version = self.latest_version()
        if version is None:
            raise NotFound("no model versions in the registry", "version")
        return self.load(version)

    def _directory(self, version: str) -> Path:
        directory = self.root / check_version_name(version)
        if not (directory / MANIFEST_FILE).is_file():
            raise NotFound(f"no model version {version!r} in the registry", "version")
        return directory


def scorer_for_version(
    root: str | os.PathLike[str], version: str, group_of: Callable[[str], str] | None = None
) -> tuple[Any, str]:
    """The scorer of ``version`` ("" = newest) and its version name.

    An empty or missing registry gives the prior scorer when no version was
    asked for; a named version that cannot be loaded raises.
    """
    try:
        registry = ModelRegistry(root, group_of)
    except ModelError:
        if version:
            raise
        prior = PriorScorer()
        return prior, prior.version
    version = version or registry.latest_version() or ""
    if not version:
        prior = PriorScorer()
        return prior, prior.version
    return registry.load(version), version
