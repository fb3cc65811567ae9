"""The ceiling of the end-to-end pipeline, from two measurements of the same run: what
decoding alone and the model alone cost, and so how fast files could become results on the
cores at hand if nothing else cost anything. The pipeline's share of that ideal says whether a
user should buy cores, a GPU, or nothing.

On CPU, decoding and the model share the same `c` cores. Decoding costs `d` core-seconds per
image (its threads over the decode-only rate) and the model `m` (onnxruntime's threads over
the model-only rate at the pipeline's batch size), so the cores can finish at most
`c / (d + m)` images per second. On CUDA the model runs beside the cores: the ideal is the
slower of decoding on all cores (`c / d`) and the model's rate.
"""

from __future__ import annotations

from typing import Any

CPU_FORMULA = "c / (d + m)"
CUDA_FORMULA = "min(c / d, model rate)"
# Below this share of the ideal, the pipeline itself (threads, batching, overlap) is what a
# user should look at before buying hardware.
WELL_USED = 85.0
BUSY = 0.9  # below this share of the cores busy, the rates are not the machine's


def ceiling(
    device: str,
    cores: int,
    decode_rate: float,
    decode_threads: int,
    model_rate: float,
    model_threads: int,
    pipeline_rate: float,
    cpu_ms: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The ideal pipeline rate, the pipeline's percentage of it, and what would raise it.

    `cpu_ms`: the process's CPU milliseconds per image of decoding alone, the model alone and
    the pipeline. They move less than rates when other work shares the machine: the pipeline's
    CPU time against the two stages' (above 100%: overhead of running them together) and the
    cores it kept busy say whether a rate is the machine's or the neighbours'."""
    d = min(decode_threads, cores) / decode_rate
    out: dict[str, Any] = {"cores": cores, "decode_core_ms_per_image": round(1000 * d, 2)}
    if device == "cpu":
        m = min(model_threads, cores) / model_rate
        ideal = cores / (d + m)
        out |= {
            "model_core_ms_per_image": round(1000 * m, 2),
            "formula": CPU_FORMULA,
            "decode_share": round(d / (d + m), 3),
            "ideal_images_per_second": round(ideal, 1),
            "per_extra_core_images_per_second": round(1 / (d + m), 1),
            "without_model_on_the_cores_images_per_second": round(cores / d, 1),
        }
    else:
        ideal = min(cores / d, model_rate)
        out |= {
            "formula": CUDA_FORMULA,
            "ideal_images_per_second": round(ideal, 1),
            "bound": "model" if model_rate < cores / d else "decode",
        }
    out["pipeline_percent_of_ideal"] = round(100 * pipeline_rate / ideal, 1)
    if cpu_ms is not None:
        out["cpu_ms_per_image"] = {k: round(v, 3) for k, v in cpu_ms.items()}
        work = cpu_ms["decode"] + cpu_ms["model"]
        out["pipeline_cpu_percent_of_stages"] = round(100 * cpu_ms["pipeline"] / work, 1)
        out["pipeline_cores_busy"] = round(cpu_ms["pipeline"] * pipeline_rate / 1000, 2)
    out["advice"] = advice(device, out)
    return out


def advice(device: str, c: dict[str, Any]) -> list[str]:
    """What the ceiling says, in a few sentences a user can act on."""
    pct, ideal = c["pipeline_percent_of_ideal"], c["ideal_images_per_second"]
    lines = []
    busy = c.get("pipeline_cores_busy")
    if busy is not None and busy < BUSY * c["cores"]:
        lines.append(
            f"the pipeline kept {busy:.2f} of {c['cores']} cores busy: other work shares this "
            "machine (or the pipeline stalls), so every rate here is below what the cores can "
            "do, and the pipeline, with more threads, may get a larger share than each stage "
            "alone (above 100%)"
        )
    if pct < WELL_USED:
        lines.append(
            f"the pipeline reaches {pct:.0f}% of its ideal {ideal:.0f} img/s: the hardware is "
            "not what limits it (try --workers, --threads, --batch-size)"
        )
    if device == "cpu":
        lines.append(
            f"decoding is {100 * c['decode_share']:.0f}% of the work, the model "
            f"{100 * (1 - c['decode_share']):.0f}%; each extra core adds about "
            f"{c['per_extra_core_images_per_second']:.0f} img/s to the ideal; a GPU that takes "
            f"the model off the cores raises it to at most "
            f"{c['without_model_on_the_cores_images_per_second']:.0f} img/s "
            f"({c['without_model_on_the_cores_images_per_second'] / ideal:.1f}x)"
        )
    elif c["bound"] == "model":
        lines.append("the GPU is the limit: a faster GPU or a lighter variant raises the ideal")
    else:
        lines.append(
            "decoding on the CPU is the limit: more CPU cores raise the ideal, a faster GPU "
            "does not"
        )
    return lines
