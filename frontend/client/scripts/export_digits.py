"""Write the browser client's digits assets into ``server/join/static/digits/``.

    .venv/bin/python frontend/client/scripts/export_digits.py           # (re)write the files
    .venv/bin/python frontend/client/scripts/export_digits.py --check   # compare, write nothing

Everything comes from ``client_sdk``, so the page trains the model a Python client trains:

* ``base.safetensors``: the frozen ``flaas:digits`` base (client_sdk.bases: pretrained on the
  public split, fresh head), float32, keys ``fc1.weight`` ... ``fc3.bias``;
* ``samples.safetensors``: the clients' pool of the digits task (client_sdk.tasks.vision: 1,149
  images no test or public row is in) as raw pixels ``x`` (U8, 0..16) and labels ``y`` (U8), and
  for every cohort size n in 1..MAX_DEVICES a tensor ``owner.<n>`` (U8) giving each row's device:
  the Dirichlet split ``flaas simulate --clients n`` cuts (client_sdk.splits, alpha 0.5,
  min 20 rows, seed 0), so browser device i of n holds the rows of simulated client i;
* ``manifest.json``: the model's identity (``config_sha256``, as the coordinator checks it at
  enrolment), its shape, the split's parameters and the SHA-256 of both files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
OUT = ROOT / "server" / "join" / "static" / "digits"
MODEL = "digits"
MAX_DEVICES = 16
#: ``flaas simulate``'s defaults (client_sdk.simulate.run_simulation, make_shards).
SPLIT = {"alpha": 0.5, "min_size": 20, "seed": 0}


def base_file() -> bytes:
    """The pretrained digits base as safetensors (client_sdk.wire_format's writer)."""
    from client_sdk.bases import pretrained_base
    from client_sdk.model_spec import BUILTIN_CONFIGS
    from client_sdk.wire_format import encode_update

    state = pretrained_base(BUILTIN_CONFIGS[MODEL]).state
    return encode_update(state, {"model": f"flaas:{MODEL}", "format": "flaas-base"})


def samples_file() -> bytes:
    """The digits pool (raw pixels, labels) and each cohort size's device of every row."""
    from safetensors.numpy import save

    from client_sdk.splits import dirichlet_split
    from client_sdk.tasks import get_task

    pool = get_task(MODEL).load(seed=0)
    pixels = np.rint(pool.x_train * 16.0)
    if not np.array_equal(pixels / 16.0, pool.x_train):
        raise AssertionError("digits features are not whole sixteenths: pixels would be lossy")
    tensors = {"x": pixels.astype(np.uint8), "y": pool.y_train.astype(np.uint8)}
    for n in range(1, MAX_DEVICES + 1):
        owner = np.empty(len(pool.y_train), dtype=np.uint8)
        for device, rows in enumerate(dirichlet_split(pool.y_train, n, **SPLIT)):
            owner[rows] = device
        tensors[f"owner.{n}"] = owner
    # No metadata: safetensors orders a metadata map differently from call to call, and these
    # bytes must be the same at every run (the manifest carries the parameters instead).
    return save(tensors)


def manifest(base: bytes, samples: bytes) -> bytes:
    from client_sdk.model_spec import BUILTIN_CONFIGS, config_sha256

    config = BUILTIN_CONFIGS[MODEL]
    info = {
        "model": f"flaas:{MODEL}",
        "config_sha256": config_sha256(config),
        "features": config["d_in"],
        "hidden": config["hidden"],
        "num_labels": config["num_labels"],
        "max_devices": MAX_DEVICES,
        "split": SPLIT,
        "sha256": {
            "base.safetensors": hashlib.sha256(base).hexdigest(),
            "samples.safetensors": hashlib.sha256(samples).hexdigest(),
        },
    }
    return (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()


def build_assets() -> dict[str, bytes]:
    """File name -> bytes of every asset."""
    base, samples = base_file(), samples_file()
    return {
        "base.safetensors": base,
        "samples.safetensors": samples,
        "manifest.json": manifest(base, samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a change")
    args = parser.parse_args(argv)
    stale = []
    for name, data in build_assets().items():
        path = OUT / name
        if path.exists() and path.read_bytes() == data:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    verb = "differ" if args.check else "written"
    print(f"{', '.join(stale) or 'nothing'} {verb} in {OUT.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
