"""Propensity scorers: one small protocol, several implementations.

The decision code asks a scorer for the feature matrix of a decision's
candidates, then for one propensity per row::

    X = scorer.features(profile, context, candidates, now)   # float32 [n, f]
    p = scorer.predict(X)                                     # float [n] in [0, 1]

Splitting the two lets the decision log keep ``X`` and lets training rebuild
exactly what was scored. Implementations:

* :class:`OnnxScorer` - a trained model (``model.onnx``) run by onnxruntime,
  one ``run`` per decision over all candidates.
* :class:`PriorScorer` - fixed propensities per offer or group; the fallback
  when no model is loaded.
* :class:`BetaBernoulliScorer` - an online learner: a Beta posterior per offer
  (or offer × channel) updated by :meth:`~BetaBernoulliScorer.learn_one`.

The non-model scorers put what ``predict`` needs (a prior, an arm index) in
their one-column feature matrix, so every scorer honours the same two calls.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import onnxruntime as ort

from models.customer.profile import Profile
from models.decisioning.facts import Candidate
from models.errors import ModelError
from models.learning.features import FeatureBuilder

OUTPUT_FORMATS = ("probabilities", "probability", "zipmap")


@runtime_checkable
class PropensityScorer(Protocol):
    """What the decision code needs of a propensity model."""

    version: str  # reported in decisions

    def features(
        self, profile: Profile, context: dict, candidates: Sequence[Candidate], now: float
    ) -> np.ndarray: ...  # float32 [n, f]

    def predict(self, X: np.ndarray) -> np.ndarray: ...  # float [n] in [0, 1]


def _check_probability(p: float, field: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ModelError(f"propensity must be a number in [0, 1], got {p!r}", field)
    return float(p)


# -- ONNX ------------------------------------------------------------------------


def onnx_session(model: bytes | str | os.PathLike[str]) -> ort.InferenceSession:
    """An inference session tuned for many tiny batches on a busy host.

    One thread and sequential execution: a decision scores ~10 rows, where
    thread hand-offs cost more than they save, and the shard actors already
    use every core.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise ModelError(f"cannot load the ONNX model: {exc}") from None


class OnnxScorer:
    """A trained propensity model run by onnxruntime.

    ``model`` is the ONNX file (path or bytes); ``builder`` makes its input
    from facts. The graph is checked against them once, here: one float32
    input named ``input_name`` whose width is ``builder.n_columns``, and an
    output ``output_name`` that yields probabilities in one of these formats:

    * ``"probabilities"`` - tensor ``[n, classes]``; column ``positive`` is used
      (skl2onnx classifiers with ``zipmap`` off);
    * ``"probability"`` - tensor ``[n]`` or ``[n, 1]`` (hand-built graphs);
    * ``"zipmap"`` - a list of ``{class: probability}`` maps, key ``positive``
      (skl2onnx's default; slower, accepted for models trained elsewhere).

    Any mismatch raises :class:`~models.errors.ModelError`. ``manifest`` is kept
    as :attr:`manifest` for reporting only.
    """

    def __init__(
        self,
        model: bytes | str | os.PathLike[str],
        builder: FeatureBuilder,
        version: str,
        input_name: str = "features",
        output_name: str = "probabilities",
        output_format: str = "probabilities",
        positive: int = 1,
        manifest: Mapping[str, Any] | None = None,
    ) -> None:
        if output_format not in OUTPUT_FORMATS:
            raise ModelError(
                f"output format {output_format!r} is not one of {OUTPUT_FORMATS}", "output.format"
            )
        self.version = version
        self.builder = builder
        self.manifest = dict(manifest or {})
        self._session = onnx_session(model)
        self._input = input_name
        self._outputs = [output_name]
        self._format = output_format
        self._positive = positive
        self._check_graph(output_name)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.builder.columns

    def features(
        self, profile: Profile, context: dict, candidates: Sequence[Candidate], now: float
    ) -> np.ndarray:
        return self.builder.build(profile, context, candidates, now)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """One onnxruntime run over all rows; float64 ``[n]``."""
        if X.shape[0] == 0:
            return np.zeros(0)
        if X.dtype != np.float32:
            X = X.astype(np.float32)
        out = self._session.run(self._outputs, {self._input: X})[0]
        if self._format == "probabilities":
            return out[:, self._positive].astype(np.float64)
        if self._format == "probability":
            return out.reshape(-1).astype(np.float64)
        return np.array([row[self._positive] for row in out], dtype=np.float64)

    def _check_graph(self, output_name: str) -> None:
        width = self.builder.n_columns
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            names = [i.name for i in inputs]
            raise ModelError(f"the model has {len(inputs)} inputs {names}; expected one", "input")
        graph_in = inputs[0]
        if graph_in.name != self._input:
            raise ModelError(
                f"the model's input is {graph_in.name!r}, the manifest says {self._input!r}",
                "input.name",
            )
        if graph_in.type != "tensor(float)":
            raise ModelError(f"the model's input is {graph_in.type}, expected float32", "input")
        shape = graph_in.shape
        if len(shape) != 2:
            raise ModelError(f"the model's input has shape {shape}, expected [n, {width}]", "input")
        if isinstance(shape[1], int) and shape[1] != width:
            raise ModelError(
                f"the model's input is {shape[1]} features wide but the manifest lists "
                f"{width} feature columns",
                "features",
            )
        outputs = {o.name: o for o in self._session.get_outputs()}
        if output_name not in outputs:
            raise ModelError(
                f"the model has no output {output_name!r}; it has {sorted(outputs)}", "output.name"
            )
        # A probe run catches what static shapes cannot: symbolic widths, the
        # wrong output picked, scores that are not probabilities.
        try:
            p = self.predict(np.zeros((2, width), dtype=np.float32))
        except Exception as exc:
            raise ModelError(f"the model fails on a [2, {width}] input: {exc}", "output") from None
        if p.shape != (2,) or not np.all((p >= 0.0) & (p <= 1.0)):
            raise ModelError(
                f"output {output_name!r} ({self._format}) does not give one probability per row",
                "output",
            )


# -- fallback rules --------------------------------------------------------------


class PriorScorer:
    """Fixed propensities: by offer id, else by group, else ``default``.

    Used when no model is loaded, and as a documented baseline. ``version`` is
    ``prior-<name>``.
    """

    def __init__(
        self,
        by_offer: Mapping[str, float] | None = None,
        by_group: Mapping[str, float] | None = None,
        default: float = 0.05,
        name: str = "default",
    ) -> None:
        self.by_offer = {
            k: _check_probability(v, f"by_offer.{k}") for k, v in (by_offer or {}).items()
        }
        self.by_group = {
            k: _check_probability(v, f"by_group.{k}") for k, v in (by_group or {}).items()
        }
        self.default = _check_probability(default, "default")
        self.version = f"prior-{name}"

    def prior(self, candidate: Candidate) -> float:
        p = self.by_offer.get(candidate.offer_id)
        if p is None:
            p = self.by_group.get(candidate.group, self.default)
        return p

    def features(
        self, profile: Profile, context: dict, candidates: Sequence[Candidate], now: float
    ) -> np.ndarray:
        """float32 ``[n, 1]``: the prior of each candidate."""
        return np.array([[self.prior(c)] for c in candidates], dtype=np.float32).reshape(-1, 1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return X[:, 0].astype(np.float64)


# -- online learning -------------------------------------------------------------


class BetaBernoulliScorer:
    """An online learner: acceptance ~ Bernoulli(θ), θ ~ Beta per arm.

    An arm is an offer id, or ``offer@channel`` when ``per_channel``. Unseen
    arms start at ``Beta(alpha, beta)``; the default (1, 19) says "about 5 %,
    weakly held". :meth:`predict` gives the posterior mean, or a posterior
    draw when ``sample`` is set (Thompson sampling, for exploration).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 19.0,
        per_channel: bool = False,
        sample: bool = False,
        seed: int | None = None,
        name: str = "online",
    ) -> None:
        if not (alpha > 0 and beta > 0):
            raise ModelError("alpha and beta must be positive", "alpha")
        self.version = f"beta-{name}"
        self.per_channel = per_channel
        self.sample = sample
        self._prior = (float(alpha), float(beta))
        self._index: dict[str, int] = {}
        self._alpha = np.zeros(0)
        self._beta = np.zeros(0)
        self._rng = np.random.default_rng(seed)
        self._key: Callable[[Candidate], str] = (
            (lambda c: f"{c.offer_id}@{c.channel}") if per_channel else (lambda c: c.offer_id)
        )

    def arm(self, key: str) -> int:
        """Index of the arm ``key``; a new arm starts at the prior."""
        i = self._index.get(key)
        if i is None:
            i = self._index[key] = len(self._index)
            self._alpha = np.append(self._alpha, self._prior[0])
            self._beta = np.append(self._beta, self._prior[1])
        return i

    def posterior(self, key: str) -> tuple[float, float]:
        """``(alpha, beta)`` of the arm ``key``."""
        i = self.arm(key)
        return float(self._alpha[i]), float(self._beta[i])

    def learn_one(
        self, candidate: Candidate | str, accepted: bool, channel: str | None = None
    ) -> None:
        """Count one outcome for a candidate, or for an offer id (and channel)."""
        if isinstance(candidate, str):
            key = f"{candidate}@{channel}" if self.per_channel else candidate
        else:
            key = self._key(candidate)
        i = self.arm(key)
        if accepted:
            self._alpha[i] += 1.0
        else:
            self._beta[i] += 1.0

    def features(
        self, profile: Profile, context: dict, candidates: Sequence[Candidate], now: float
    ) -> np.ndarray:
        """float32 ``[n, 1]``: the arm index of each candidate."""
        arms = [self.arm(self._key(c)) for c in candidates]
        return np.array(arms, dtype=np.float32).reshape(-1, 1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        idx = X[:, 0].astype(np.intp)
        a, b = self._alpha[idx], self._beta[idx]
        if self.sample:
            return self._rng.beta(a, b)
        return a / (a + b)
