"""The one exception hierarchy of pneumo-onnx (the ground floor: it imports nothing of ours).

Every error a user can cause carries a message meant for that user and an exit code. The CLI
turns them into `message + exit code` in exactly one place (`engine.cli.main`), the server into
an HTTP status in exactly one place (`engine.serve.front.errors`); nothing else catches them to
print or answer.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran, and something it checked or processed failed
EXIT_USAGE = 2  # the command was asked for something it cannot do as asked


class PneumoError(Exception):
    """Base class: a user-facing message plus the CLI exit code it maps to."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(PneumoError):
    """Bad arguments: a missing file, an unknown option value, a contradiction."""

    exit_code = EXIT_USAGE


class MissingExtraError(UsageError):
    """An optional dependency group is not installed (an ImageError-like per-item failure when
    it concerns one input, e.g. a DICOM file without pydicom)."""

    def __init__(self, extra: str, purpose: str, missing: str) -> None:
        super().__init__(
            f"{purpose} needs the '{extra}' extra ({missing} is not installed): "
            f"pip install 'pneumo-onnx[{extra}]'"
        )
        self.extra = extra

    @classmethod
    def of(cls, error: ModuleNotFoundError, purpose: str) -> MissingExtraError | None:
        """The extra that installs the module `error` did not find (None: not one of an
        extra's, such as a module of ours: a bug, not a missing install)."""
        found = EXTRA_MODULES.get((error.name or "").split(".")[0])
        return None if found is None else cls(found[0], purpose, found[1])


# The modules imported only where they are needed, by the extra that installs them and the
# distribution they come from (pyproject.toml's optional dependencies; tests/test_exit_codes.py
# checks them against it).
EXTRA_MODULES: dict[str, tuple[str, str]] = {
    "fastapi": ("serve", "fastapi"),
    "starlette": ("serve", "fastapi"),
    "uvicorn": ("serve", "uvicorn"),
    "httptools": ("serve", "httptools"),
    "uvloop": ("serve", "uvloop"),
    "multipart": ("serve", "python-multipart"),
    "python_multipart": ("serve", "python-multipart"),
    "prometheus_client": ("serve", "prometheus-client"),
    "grpc": ("serve", "grpcio"),
    "google": ("serve", "protobuf"),
    "pydicom": ("dicom", "pydicom"),
    "httpx": ("dicomweb", "httpx"),
    "highdicom": ("dicomweb", "highdicom"),
    "ray": ("ray", "ray"),
    "matplotlib": ("report", "matplotlib"),
    "psycopg": ("postgres", "psycopg"),
    "tensorflow": ("convert", "tensorflow-cpu"),
    "tf_keras": ("convert", "tf_keras"),
    "tf2onnx": ("convert", "tf2onnx"),
    "onnx": ("convert", "onnx"),
    "ai_edge_litert": ("convert", "ai-edge-litert"),
}


class NotFoundError(UsageError):
    """A named thing does not exist: an unknown job id, a missing prediction log (HTTP 404)."""


class ConflictError(UsageError):
    """The thing exists but its state does not allow this yet: a job's results before it is
    done (HTTP 409)."""


class TooLarge(UsageError):
    """A request over the upload limit, also once its compressed body is inflated (HTTP 413)."""


class NotSupported(UsageError):
    """A protocol feature this server does not serve (Triton's statistics, shared memory):
    HTTP 501, so a client says "not implemented" rather than "no such model"."""


class NotAcceptable(UsageError):
    """No answer of a type the request's Accept header takes (HTTP 406): a Structured Report
    asked for an image that is not DICOM; the message says which types can be answered."""


class UnsupportedMediaType(UsageError):
    """A request body of a Content-Type the route does not read (HTTP 415); the message names
    the types it does."""


class FileAccessError(UsageError):
    """A file or folder the user named cannot be read or written: "cannot write NAME: reason".

    `name` is what the user typed (or a file's bare name): never a path the user did not give.
    """

    def __init__(self, action: str, name: object, reason: BaseException | str) -> None:
        if isinstance(reason, OSError):
            reason = reason.strerror or str(reason)
        super().__init__(f"cannot {action} {name}: {reason}")


class Overloaded(PneumoError):
    """Too much work in flight (a full queue, a server shutting down): try again later. The
    server answers 503 with `Retry-After: retry_after`."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RemoteError(PneumoError):
    """A remote server (a DICOMweb PACS) cannot be reached, or failed or refused a request that
    the whole run needs: the run stops, and what it finished stays written."""


class AuthenticationError(UsageError):
    """A remote server refused the credentials given (HTTP 401/403): fix them, then rerun."""


class ModelLoadError(PneumoError):
    """A model file or folder exists but cannot be read as the model it claims to be."""


class ContractError(PneumoError):
    """A model's input/output contract is missing, contradictory or unsupported."""


class ConversionError(PneumoError):
    """tf2onnx failed, or produced a graph we refuse to ship."""


class ValidationError(PneumoError):
    """One or more validation checks failed; the message lists every failure, then what to do
    (`hint`) when there is a way forward."""

    def __init__(self, message: str, failures: list[str], hint: str = "") -> None:
        lines = [message, *(f"  - {f}" for f in failures), *([hint] if hint else [])]
        super().__init__("\n".join(lines))
        self.failures = failures


class RepositoryError(PneumoError):
    """A model repository cannot be written, or its manifest does not match its files."""


class InferenceError(PneumoError):
    """onnxruntime refused to run the model on the given inputs."""


class ImageError(PneumoError):
    """An input image cannot be decoded or is unacceptable (size, format, content)."""


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's text: third-party errors can run to pages."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
