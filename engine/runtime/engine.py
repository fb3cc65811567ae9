"""`Engine`: load a converted model once, score chest X-rays from any thread.

    from pneumo_onnx import Engine
    engine = Engine.load()                      # the default model shipped with the package
    engine.predict("xray.jpeg")                 # {'prediction': 'PNEUMONIA', 'confidence': ...}
    engine.predict_batch(paths, threshold=0.3)  # input order kept, per-item 'error'

One Engine can be shared by many threads: onnxruntime sessions are thread-safe and release the
GIL, and the Engine keeps no per-call state.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from itertools import islice
from typing import Any

import numpy as np
import onnxruntime as ort

from pneumo_onnx.engine.contract import Contract, check_threshold
from pneumo_onnx.engine.errors import PneumoError, UsageError, first_line
from pneumo_onnx.engine.repository.resolve import ResolvedModel, resolve
from pneumo_onnx.engine.repository.sections import FileEntry
from pneumo_onnx.engine.runtime import isolated
from pneumo_onnx.engine.runtime.decoders import ImageSource, describe
from pneumo_onnx.engine.runtime.fidelity import choose
from pneumo_onnx.engine.runtime.preprocess import PREPROCESSORS
from pneumo_onnx.engine.runtime.results import Result, Scored, failed, scored
from pneumo_onnx.engine.runtime.sandbox import Sandbox
from pneumo_onnx.engine.runtime.session import create_session, run, session_options

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
ISOLATED_PER_CALL = 4  # images per call to a decode worker in `stream`


def check_batch_options(batch_size: int, workers: int | None) -> None:
    """Refuse sizes that would stall or spin: callers check before creating any output."""
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if workers is not None and workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")


def decode_workers(workers: int | None = None) -> int:
    """The decode threads `Engine.stream` runs: the caller's number, else one per core."""
    return workers or os.cpu_count() or 1


class Engine:
    """A loaded model plus its contract and preprocessing. Build it with `Engine.load`; use it
    as a context manager (or call `close()`) to free the model's memory when done:

        with Engine.load() as engine:
            engine.predict("xray.jpeg")
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        contract: Contract,
        model: ResolvedModel,
        device: str = "cpu",
        preprocessing: str = "auto",
    ) -> None:
        path, why = choose(preprocessing, contract, model.manifest)
        self._session: ort.InferenceSession | None = session
        self.contract = contract
        self.model = model
        self.device = device
        self.preprocessing = path  # 'fast' or 'reference': what runs
        self.preprocessing_reason = why
        self._prepare = PREPROCESSORS[path]

    @classmethod
    def load(
        cls,
        model: str | os.PathLike | None = None,
        device: str = "cpu",
        variant: str | None = None,
        preprocessing: str = "auto",
        threads: int | None = None,
        spinning: bool = False,
    ) -> Engine:
        """Load a model file or repository folder (None: the default model shipped with us).

        The input contract comes from the model's metadata; plain ONNX files get safe
        defaults. `preprocessing`: 'auto' runs `fast` only where the model's conversion
        measured it faithful (`fidelity.choose`), 'fast' or 'reference' force one path.
        `spinning=True` suits back-to-back batch jobs, never a server.
        """
        resolved = resolve(model, variant)
        session = create_session(resolved.path, device, session_options(threads, spinning))
        meta = session.get_modelmeta().custom_metadata_map
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        contract = Contract.from_metadata(meta, inp.name, inp.shape, out.name)
        log.info(
            "loaded %s (%s) on %s", resolved.path.name, resolved.variant, session.get_providers()[0]
        )
        return cls(session, contract, resolved, device, preprocessing)

    @property
    def session(self) -> ort.InferenceSession:
        """The onnxruntime session; a UsageError once the engine is closed."""
        if self._session is None:
            raise UsageError(f"this engine ({self.model.path.name}) is closed: load it again")
        return self._session

    def close(self) -> None:
        """Free the model (onnxruntime's session and its memory). Idempotent."""
        self._session = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def provider(self) -> str:
        """The execution provider that actually runs the model."""
        return str(self.session.get_providers()[0])

    # --- single images ---------------------------------------------------------------------

    def preprocess(self, image: ImageSource) -> np.ndarray:
        """One image as the model's input tensor (raises ImageError for a bad image)."""
        return self._prepare(image, self.contract)

    def predict(self, image: ImageSource, threshold: float | None = None) -> Scored:
        """Score one image. Raises ImageError/UsageError for bad input (batch calls don't)."""
        t = self.resolve_threshold(threshold)
        score = float(self.scores(self.preprocess(image)[None])[0])
        return self.result(score, t)

    # --- batches ---------------------------------------------------------------------------

    def predict_batch(
        self,
        images: Sequence[ImageSource],
        threshold: float | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int | None = None,
    ) -> list[Result]:
        """Score many images; results in input order, a bad image gets {'error': ...}."""
        return [r for _, r in self.stream(images, threshold, batch_size, workers)]

    def stream(
        self,
        images: Iterable[ImageSource],
        threshold: float | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int | None = None,
        sandbox: Sandbox | None = None,
    ) -> Iterator[tuple[int, Result]]:
        """Yield (index, result) in input order while decoding runs ahead in a thread pool.

        At most 2 x batch_size images are decoded ahead, so memory stays bounded for any
        number of inputs; the model runs on one batch while the pool decodes the next. With a
        `sandbox` (engine.runtime.isolated.decode_sandbox), images are decoded in its worker
        processes: a file that would exhaust memory, hang or crash a decoder is that image's
        error row, and the run goes on.
        """
        t = self.resolve_threshold(threshold)
        check_batch_options(batch_size, workers)
        workers = sandbox.size if sandbox is not None else decode_workers(workers)
        # A worker process decodes a few images per call: one round trip, not one each.
        per_call = 1 if sandbox is None else ISOLATED_PER_CALL
        prepare = self._prepare_many if sandbox is None else partial(self._isolated, sandbox)
        items = iter(enumerate(images))
        with ThreadPoolExecutor(workers, thread_name_prefix="pneumo-decode") as pool:
            ahead: deque[tuple[list[int], Future[list[np.ndarray | str]]]] = deque()
            queued = 0

            def fill() -> None:
                nonlocal queued
                while queued < 2 * batch_size:
                    taken = list(islice(items, per_call))
                    if not taken:
                        return
                    indices, sources = zip(*taken, strict=True)
                    ahead.append((list(indices), pool.submit(prepare, list(sources))))
                    queued += len(taken)

            fill()
            done: list[tuple[int, np.ndarray | str]] = []
            tensors = 0
            while ahead:
                indices, future = ahead.popleft()
                queued -= len(indices)
                fill()
                for index, value in zip(indices, future.result(), strict=True):
                    done.append((index, value))
                    tensors += not isinstance(value, str)
                    if tensors == batch_size:
                        yield from self._score_ready(done, t)
                        done, tensors = [], 0
            yield from self._score_ready(done, t)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """P(positive) for a preprocessed batch, shape (N,)."""
        return self.contract.scores(run(self.session, x)[0])

    def result(self, score: float, threshold: float) -> Scored:
        """The deployment guide's result fields for one score."""
        return scored(self.contract, score, threshold)

    def info(self) -> dict[str, Any]:
        """What `pneumo info` shows: model, contract, variants, provider."""
        m = self.model
        manifest = m.manifest
        return {
            "model": str(m.path),
            "name": m.name,
            "version": m.version,
            "variant": m.variant,
            "variants": m.variants,
            "provider": self.provider,
            "preprocessing": self.preprocessing,
            "preprocessing_reason": self.preprocessing_reason,
            "contract": self.contract.to_dict(),
            "source": manifest.source.to_dict() if manifest and manifest.source else None,
            "parity": manifest.parity.to_dict() if manifest and manifest.parity else None,
            "fast_vs_reference": (
                manifest.fast_vs_reference.to_dict()
                if manifest and manifest.fast_vs_reference
                else None
            ),
            "sha256": m.sha256,
            "threshold_source": manifest.threshold_source if manifest else None,
            "fp32_layers": _fp32_layers(manifest.variants.get(m.variant) if manifest else None),
        }

    def resolve_threshold(self, threshold: float | None) -> float:
        """The given threshold, checked, or the model's default (for callers building results)."""
        return self.contract.threshold if threshold is None else check_threshold(threshold)

    # --- internals -------------------------------------------------------------------------

    def _prepare_safely(self, image: ImageSource) -> np.ndarray | str:
        """The tensor, or the error message: one bad image never fails a batch."""
        try:
            return self._prepare(image, self.contract)
        except PneumoError as e:
            return e.message
        except Exception as e:  # a decoder bug on a hostile file: report it for this item only
            log.exception("unexpected error preprocessing %s", describe(image))
            return f"cannot process {describe(image)}: {type(e).__name__}: {first_line(e)}"

    def _prepare_many(self, images: list[ImageSource]) -> list[np.ndarray | str]:
        return [self._prepare_safely(image) for image in images]

    def _isolated(self, sandbox: Sandbox, images: list[ImageSource]) -> list[np.ndarray | str]:
        """The tensors decoded in `sandbox`, each bad image's error message in its place."""
        return isolated.tensors(sandbox, images, self.contract, self.preprocessing)

    def _score_ready(
        self, done: list[tuple[int, np.ndarray | str]], threshold: float
    ) -> Iterator[tuple[int, Result]]:
        tensors = [v for _, v in done if not isinstance(v, str)]
        scores = iter(self.scores(np.stack(tensors)) if tensors else [])
        for index, value in done:
            if isinstance(value, str):
                yield index, failed(value)
            else:
                yield index, self.result(float(next(scores)), threshold)


def _fp32_layers(entry: FileEntry | None) -> dict[str, Any] | None:
    """What a reduced-precision variant keeps in fp32 (nodes, share of the multiply-adds);
    None for the others and for conversions that predate the record."""
    precision = entry.precision if entry else None
    if precision is None:
        return None
    return {"nodes": list(precision.fp32_nodes), "mac_share": precision.fp32_mac_share}
