"""Probe multi-process (multi-host style) data-parallel training with Keras 3.

Usage: ``python multihost_probe.py tf|jax``.

It launches, as subprocesses on this machine (CPU only):
  * a single-process reference: a tiny Dense model (8 -> 16 -> 3, fixed initial
    weights) trained on fixed NumPy data (40 x 8, 3 classes) with SGD lr 0.1,
    global batch 8, shuffle=False, 2 epochs, then evaluated (batch 8);
  * for each way of feeding the data, 2 worker processes on localhost that do the
    same training data-parallel:
      - tf:  ``tf.distribute.MultiWorkerMirroredStrategy`` from ``TF_CONFIG``
             (model built and compiled in ``strategy.scope()``); each worker
             passes the GLOBAL data (numpy, keras.utils.PyDataset, tf.data with
             AutoShardPolicy.DATA) and the strategy shards it;
      - jax: ``keras.distribution.initialize`` + ``DataParallel``; each process
             passes ITS half of every global batch (numpy, PyDataset), or the
             global tf.data dataset that keras shards itself (rebatch + shard).
Variants named "+patch" apply the keras#20585 workaround for keras 3.15 + MWMS (two
monkeypatches of private keras APIs, see worker()); plain "numpy" shows the stock failure.
It prints, per variant, whether it ran and the max abs difference of the
per-batch loss logs, the epoch losses, the final weights and the evaluate()
results against the reference, and whether model.save() on rank 0 worked (the
saved file is reloaded and evaluated in a fresh single process).
Env: MHP_VARIANTS=a,b (subset), MHP_SAVE=all|rank0|nodist (who calls model.save; with
"rank0" under JAX, rank 0 hangs in a cross-process collective, shown by faulthandler).
"""

import faulthandler
import json
import os
import socket
import subprocess
import sys
import tempfile

import numpy as np

N, F, C, GB, EPOCHS, LR = 40, 8, 3, 8, 2, 0.1
VARIANTS = {"tf": ["numpy", "numpy+patch", "pydataset+patch", "tfdata+patch"],
            "jax": ["numpy", "pydataset", "tfdata"]}


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, F)).astype("float32")
    y = rng.integers(0, C, size=(N,)).astype("int32")
    w = [rng.normal(scale=0.3, size=s).astype("float32") for s in [(F, 16), (16,), (16, C), (C,)]]
    return x, y, w


def local_half(a, rank, nproc):
    """Rows of `a` that process `rank` feeds: its slice of every global batch."""
    per = GB // nproc
    return np.concatenate([a[b + rank * per: b + (rank + 1) * per] for b in range(0, len(a), GB)])


def worker(backend, role, variant, rank, port, out):
    nproc = 2 if role == "worker" else 1
    faulthandler.dump_traceback_later(120, exit=True)  # a hung collective shows where
    strategy = None
    if backend == "tf":
        import tensorflow as tf

        if role == "worker":  # create the strategy before anything else touches TF
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        import keras
    else:
        import keras

        if role == "worker":
            keras.distribution.initialize(
                job_addresses=f"localhost:{port}", num_processes=2, process_id=rank)
        import jax

        if role == "worker":
            dist = keras.distribution.DataParallel(devices=jax.devices())
            # numpy / PyDataset inputs are per-process already: keras must not shard them
            dist.auto_shard_dataset = variant == "tfdata"
            keras.distribution.set_distribution(dist)
    keras.config.disable_traceback_filtering()  # full tracebacks in the report
    x, y, w0 = data()
    # what this process feeds: TF workers the global data, JAX workers their half
    shard = backend == "jax" and role == "worker" and variant != "tfdata"
    xl, yl = (local_half(x, rank, nproc), local_half(y, rank, nproc)) if shard else (x, y)
    bs = GB // nproc if shard else GB

    class Seq(keras.utils.PyDataset):
        def __len__(self):
            return len(xl) // bs

        def __getitem__(self, i):
            return xl[i * bs:(i + 1) * bs], yl[i * bs:(i + 1) * bs]

    patch, variant = variant.endswith("+patch"), variant.removesuffix("+patch")

    def feed():
        if variant == "numpy":
            return {"x": xl, "y": yl, "batch_size": bs}
        if variant == "pydataset":
            return {"x": Seq()}
        import tensorflow as tf  # tf.data only (also usable as a data pipeline under JAX)

        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GB)
        opts = tf.data.Options()
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return {"x": ds.with_options(opts)}

    class Log(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.batch_losses = []

        def on_train_batch_end(self, batch, logs=None):
            self.batch_losses.append(float(logs["loss"]))

    def build():
        m = keras.Sequential([keras.Input((F,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(C, activation="softmax")])
        m.compile(optimizer=keras.optimizers.SGD(LR), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
        m.set_weights(w0)
        return m

    if strategy is not None:
        with strategy.scope():
            model = build()
            if patch:  # keras#20585 workaround (private API): build all state here, then
                # skip TFTrainer._maybe_symbolic_build, whose strategy.reduce("MEAN", batch)
                # fails under MultiWorkerMirroredStrategy
                model._symbolic_build(data_batch=(x[:1], y[:1]))
        if patch:
            model._maybe_symbolic_build = lambda *a, **k: None
            # 2nd bug: keras/src/backend/tensorflow/trainer.py reduce_per_replica does
            # strategy.reduce("MEAN", v, axis=0) on the scalar per-replica logs -> ValueError
            from keras.src.backend.tensorflow import trainer as tft

            orig = tft.reduce_per_replica

            def reduce_per_replica(values, strategy, reduction="auto"):
                if reduction in ("auto", "mean") and tft._collective_all_reduce_multi_worker(strategy):
                    return keras.tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
                return orig(values, strategy, reduction)

            tft.reduce_per_replica = reduce_per_replica
    else:
        model = build()
    log = Log()
    hist = model.fit(**feed(), epochs=EPOCHS, shuffle=False, verbose=0, callbacks=[log])
    ev = model.evaluate(**feed(), verbose=0)
    res = {"batch_losses": log.batch_losses, "epoch_losses": [float(v) for v in hist.history["loss"]],
               "evaluate": [float(v) for v in ev], "weights": [np.asarray(v).tolist() for v in model.get_weights()]}
    if backend == "jax":
        res["devices"], res["processes"] = len(jax.devices()), jax.process_count()
    # MHP_SAVE: "all" = every rank calls save (rank>0 to a throwaway file), "rank0" = only
    # rank 0 calls it, "nodist" = only rank 0, with the JAX distribution unset meanwhile
    mode = os.environ.get("MHP_SAVE", "all")
    if role == "worker" and (rank == 0 or mode == "all"):
        name = "model.keras" if rank == 0 else f"throwaway{rank}.keras"
        try:
            if mode == "nodist" and backend == "jax":
                keras.distribution.set_distribution(None)
            model.save(os.path.join(os.path.dirname(out), name))
            res["saved"] = f"ok ({mode})"
        except Exception as e:  # noqa: BLE001 (report it, don't hide it)
            res["saved"] = f"{type(e).__name__}: {e}"
    path = os.environ.get("MHP_RELOAD")
    if role == "ref" and path:  # reload the model saved by rank 0 of the workers
        res["reloaded_evaluate"] = [float(v) for v in keras.saving.load_model(path).evaluate(x, y, batch_size=GB, verbose=0)]
    with open(out, "w") as f:
        json.dump(res, f)


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(backend, role, variant, rank, port, out, env_extra):
    env = dict(os.environ, KERAS_BACKEND={"tf": "tensorflow"}.get(backend, backend), CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
               JAX_PLATFORMS="cpu", **env_extra)
    cmd = [sys.executable, __file__, backend, role, variant, str(rank), str(port), out]
    with open(out + ".err", "w") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, env=env, stdout=err, stderr=subprocess.STDOUT), out


def wait(procs, timeout):
    results = []
    for p, out in procs:
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = "timeout"
        if rc == 0 and os.path.exists(out):
            with open(out) as f:
                results.append(json.load(f))
        else:
            with open(out + ".err") as f:
                lines = f.read().splitlines()
            frames = [ln.strip() for ln in lines if "site-packages/keras/" in ln or "Timeout" in ln]
            errs = [ln for ln in lines if ln.split(":")[0].endswith(("Error", "Exception"))]
            results.append({"error": f"rc={rc}\n    " + "\n    ".join(frames[-3:] + errs[-1:])})
    return results


def wdiff(a, b):
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in zip(a, b))


def maxdiff(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b))) if a.shape == b.shape else f"shape {a.shape} vs {b.shape}"


def main(backend):
    tmp = tempfile.mkdtemp(prefix=f"mhprobe_{backend}_")
    print(f"[{backend}] outputs in {tmp}")
    ok = True
    ref = None
    for variant in os.environ.get("MHP_VARIANTS", ",".join(VARIANTS[backend])).split(","):
        d = os.path.join(tmp, variant)
        os.makedirs(d)
        ports = [free_port(), free_port()]
        procs = []
        for rank in range(2):
            env = {}
            if backend == "tf":
                env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                                               "task": {"type": "worker", "index": rank}})
            out = os.path.join(d, f"rank{rank}.json")
            procs.append(launch(backend, "worker", variant, rank, ports[0], out, env))
        res = wait(procs, timeout=200)
        saved = os.path.join(d, "model.keras")
        env = {"MHP_RELOAD": saved} if os.path.exists(saved) else {}
        refs = wait([launch(backend, "ref", "numpy", 0, 0, os.path.join(d, "ref.json"), env)], 200)
        ref = refs[0]
        if "error" in ref:
            print(f"reference failed:\n{ref['error']}")
            return 1
        print(f"\n== {backend} / {variant}: 2 processes vs 1 process, global batch {GB} ==")
        for rank, r in enumerate(res):
            if "error" in r:
                ok = False
                print(f"  rank {rank}: FAILED {r['error']}")
                continue
            extra = f" devices={r.get('devices')} processes={r.get('processes')}" if backend == "jax" else ""
            print(f"  rank {rank}: ran{extra}; max|diff| vs ref: "
                  f"batch-loss logs {maxdiff(r['batch_losses'], ref['batch_losses'])}, "
                  f"epoch losses {maxdiff(r['epoch_losses'], ref['epoch_losses'])}, "
                  f"weights {wdiff(r['weights'], ref['weights'])}, "
                  f"evaluate [loss, acc] {maxdiff(r['evaluate'], ref['evaluate'])}"
                  + (f"; save: {r['saved']}" if "saved" in r else ""))
        if "reloaded_evaluate" in ref:
            print(f"  rank-0 saved model reloaded in 1 process: evaluate max|diff| vs ref "
                  f"{maxdiff(ref['reloaded_evaluate'], ref['evaluate'])}")
    print(f"\nreference: epoch losses {ref['epoch_losses']}, evaluate {ref['evaluate']}")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] in VARIANTS:
        sys.exit(main(sys.argv[1]))
    elif len(sys.argv) == 7:
        b, role, variant, rank, port, out = sys.argv[1:]
        worker(b, role, variant, int(rank), int(port), out)
    else:
        sys.exit(__doc__)
