"""Multi-trial search (evolution, random, tpe): every trial trains one sampled network from scratch.

:func:`run_multitrial` hands NNI a :class:`~nas_restore.nni_layer.ChoiceSpace` (the space's choices
as plain categoricals) and a strategy; each trial (:func:`run_trial`) decodes its sample into the
space's architecture dict, builds the space's plain network from the genotype, trains it
``trial_epochs`` epochs with our restoration loss and a fresh Lightning trainer (NNI's sequential
engine would otherwise reuse one trainer, see NNI_NOTES 1d), scores validation PSNR and SSIM, and
reports PSNR to NNI, which always maximises. A trial that raises (out of memory, a diverging loss)
is recorded as failed and the search goes on.

A trial of several epochs keeps ``trial_checkpoints/<architecture digest>/last.ckpt`` after each epoch and
removes it once its row is written: a trial killed with its search resumes from its last finished epoch when
the re-run trains that architecture again (:func:`train_and_score`), so a kill loses at most an epoch of each
trial in flight.

Each trial writes its row to ``trials/<...>.json`` in the run folder (from the search process in
the sequential engine, from its own process in the training-service engine). As the strategy sees
each trial end, the search process appends it, with that row, to the run's ledger
(``ledger.jsonl``, :class:`Ledger`); the same command run again (after a kill, say) replays the
ledger to the strategy and trains only the missing trials (:func:`run_multitrial`). At the end the
search process writes ``trials.csv``, ``anytime.csv`` and, with a cost objective, ``pareto.csv``.

Trial processes read their job from a plain-JSON job file (``multitrial_job.json``, data only, never a
pickle: a run folder may come from anyone) and rebuild the datasets from the config with the
search's own function, so they are the search's datasets (deterministic by seed).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from nas_restore import config as cfg
from nas_restore.config import ConfigError, changed_fields, refuse_changed_settings
from nas_restore.datasets import train_val_datasets
from nas_restore.device import lightning_accelerator
from nas_restore.errors import UserError
from nas_restore.nni_layer import ChoiceSpace, decode_choices, space_choices
from nas_restore.nni_layer.runner import (FinishedTrial, nni_trial_id, report_final_metric, run_multitrial_experiment,
                                         stop_recorded)
from nas_restore.precision import resolve_precision
from nas_restore.profiling import count_flops, count_parameters, input_shape, measure_latency
from nas_restore.run_records import (ANYTIME, JOB_FILE, LEDGER, NNI_DIR, PARETO, PROCESSES, TRIAL_CHECKPOINTS_DIR,
                                     TRIALS, TRIALS_DIR,
                                     RunRecordError, write_pareto, write_trial_anytime, write_trials)
from nas_restore.seeding import seed_everything
from nas_restore.threads import threads_per_job
from nas_restore.training import (EpochShuffle, OptimConfig, RestorationModule, ShareThreads, _quiet_lightning,
                                  _weights_only_fit, check_resume_checkpoint)
from search_spaces import find_space

log = logging.getLogger(__name__)

COST_OBJECTIVES = ("params", "flops", "latency")
COST_COLUMNS = {"params": "params", "flops": "flops", "latency": "latency_s"}


def cost_objective(objectives: Sequence[str]) -> str | None:
    """The cost objective of ``objectives`` (``["psnr"]`` -> None, ``["psnr", "flops"]`` -> "flops")."""
    objectives = [str(o).strip().lower() for o in objectives]
    if not objectives or objectives[0] != "psnr" or len(objectives) > 2 or \
            (len(objectives) == 2 and objectives[1] not in COST_OBJECTIVES):
        raise ConfigError(f"objectives {objectives} not understood: give ['psnr'] or ['psnr', X] with X one of "
                         f"{', '.join(COST_OBJECTIVES)} (CLI: --objectives psnr,params)")
    return objectives[1] if len(objectives) == 2 else None


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (psnr, cost) that no other point dominates: maximise PSNR, minimise cost.

    A point is dominated when another has PSNR >= and cost <= with one of them strict; equal points
    are all kept. Points with a NaN coordinate are never on the front. Indices come sorted by cost.
    """
    valid = [(i, float(p), float(c)) for i, (p, c) in enumerate(points) if not (math.isnan(p) or math.isnan(c))]
    front = [(i, p, c) for i, p, c in valid
             if not any(p2 >= p and c2 <= c and (p2 > p or c2 < c) for _, p2, c2 in valid)]
    return [i for i, _, _ in sorted(front, key=lambda t: (t[2], -t[1], t[0]))]


@dataclass
class TrialJob:
    """What every trial needs: kept in memory for in-process trials (sequential engine); for trial
    processes (training-service engine) written as plain JSON (:func:`write_job`) and rebuilt from it
    (:func:`read_job`), datasets included, so that no code or pickle ever sits in the run folder."""

    config: Any                  # SearchConfig
    space: str                   # the space's name or file path (found again with find_space)
    space_config: Any
    multiples: dict[str, dict[str, Any]]
    train_data: Any
    val_data: Any
    run_dir: str
    device: str
    started_wall: float          # time.time() at the start of the search
    deadline_wall: float | None  # no trial starts training after this time
    cost: str | None             # the cost objective, if any
    threads: int | None          # torch threads per trial process (training-service engine)


_JOBS: dict[Any, TrialJob] = {}
_MEMORY = "memory:"
JOB_FORMAT = "nas-restore multi-trial job"
JOB_VERSION = 1
MAX_JOB_BYTES = 16 * 2**20  # a job is a few kB: anything near this is not one
_JOB_KEYS = {"format": str, "version": int, "token": str, "config": dict, "space": str, "space_config": dict,
             "multiples": dict, "run_dir": str, "device": str, "started_wall": (int, float),
             "deadline_wall": (int, float, type(None)), "cost": (str, type(None)), "threads": (int, type(None)),
             "train_items": int, "val_items": int}


def write_job(job: TrialJob, path: Path, token: str) -> Path:
    """Write ``job`` as plain JSON for the trial processes (no datasets: they rebuild them from the config).

    ``token`` (random per search, handed to the trials through NNI) lets a trial check that the file is
    the one this search wrote. The config must survive the JSON round trip unchanged, or the trials
    would train with other settings than the search reports.
    """
    data = {"format": JOB_FORMAT, "version": JOB_VERSION, "token": token, "config": cfg.to_dict(job.config),
            "space": job.space, "space_config": job.space_config.to_dict(), "multiples": job.multiples,
            "run_dir": job.run_dir, "device": job.device, "started_wall": job.started_wall,
            "deadline_wall": job.deadline_wall, "cost": job.cost, "threads": job.threads,
            "train_items": len(job.train_data), "val_items": len(job.val_data)}
    try:
        text = json.dumps(data, indent=1, allow_nan=False)
        same = cfg.to_dict(cfg.from_dict(type(job.config), json.loads(text)["config"], "search")) == data["config"]
    except (TypeError, ValueError) as err:
        raise ConfigError(f"the search's settings cannot be written as JSON for the trial processes ({err}): give "
                          "strategy_options and training_service as plain values (numbers, strings, lists, "
                          "mappings), or run with parallel 1 and no training_service") from None
    if not same:
        raise ConfigError("the search's settings change when written as JSON for the trial processes: give them "
                          "as plain values (numbers, strings, lists, mappings), or run with parallel 1 and no "
                          "training_service")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # whole files only: a trial may start reading at once
    return path


def _bad_job(path: Path, problem: str) -> UserError:
    return UserError(f"{path} is not a usable multi-trial job file ({problem}): `nas-restore search` writes it for its "
                     "own trial processes and deletes it when the search ends; start the search again rather than "
                     "reusing, copying or editing the file")


def read_job(path: str | Path, config_class: type, token: str | None = None) -> TrialJob:
    """The job of a trial process, rebuilt from the JSON of :func:`write_job` (data only: nothing is unpickled).

    The file is checked (size, format, version, the search's ``token``, every key's type) before
    anything is built from it; the datasets are rebuilt with the search's own function
    (:func:`~nas_restore.datasets.train_val_datasets`, deterministic by seed) and must have the sizes the
    search had. A space given as ``path/to/file.py:Class`` is imported again from that path: the user
    chose it on the search's command line, and the token ties the file to that search.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JOB_BYTES:
            raise _bad_job(path, f"{size / 2**20:.1f} MiB, a job is a few kB")
        data = json.loads(path.read_text())
    except OSError as err:
        raise _bad_job(path, f"cannot be read: {err}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _bad_job(path, f"not JSON: {err}") from None
    if not isinstance(data, dict) or data.get("format") != JOB_FORMAT:
        raise _bad_job(path, f"no {JOB_FORMAT!r} format field")
    if data.get("version") != JOB_VERSION:
        raise _bad_job(path, f"version {data.get('version')!r}, this nas-restore reads version {JOB_VERSION}")
    wrong = [k for k, kinds in _JOB_KEYS.items()  # no field is a bool (which would pass as an int)
             if k not in data or isinstance(data[k], bool) or not isinstance(data[k], kinds)]
    if not wrong and not all(isinstance(m, dict) and isinstance(m.get("values"), list)
                             and isinstance(m.get("single"), bool) for m in data["multiples"].values()):
        wrong = ["multiples"]
    if wrong:
        raise _bad_job(path, f"missing or mistyped field(s) {', '.join(wrong)}")
    if token is not None and data["token"] != token:
        raise _bad_job(path, "written by another search (its token differs)")
    try:
        config = cfg.from_dict(config_class, data["config"], "config")
        if config.space != data["space"]:
            raise ValueError(f"space {data['space']!r} differs from the config's {config.space!r}")
        spec = find_space(data["space"])
        space_config = spec.config_class.from_dict(data["space_config"])
    except (UserError, ValueError, TypeError, KeyError) as err:
        raise _bad_job(path, str(err)) from None
    seed_everything(config.seed)  # as the search did before building them
    train_data, val_data = train_val_datasets(config.data, space_config.frames, config.seed)
    if (len(train_data), len(val_data)) != (data["train_items"], data["val_items"]):
        source = config.data.folder or "synthetic"
        raise UserError(f"the trial's data differ from the search's: {len(train_data)}/{len(val_data)} train/val items "
                        f"here, {data['train_items']}/{data['val_items']} in the search ({source}): give every "
                        "trial machine the same data at the same path")
    return TrialJob(config=config, space=data["space"], space_config=space_config, multiples=data["multiples"],
                    train_data=train_data, val_data=val_data, run_dir=data["run_dir"], device=data["device"],
                    started_wall=float(data["started_wall"]), deadline_wall=data["deadline_wall"], cost=data["cost"],
                    threads=data["threads"])


def _load_job(path: str, relative: str | None = None, token: str | None = None,
              config_class: type | None = None) -> TrialJob:
    """The job: in memory for the sequential engine's in-process trials, else the JSON job file.

    A remote trial runs in NNI's upload of the launch folder: there the job is at its relative path.
    """
    if path.startswith(_MEMORY):
        if path not in _JOBS:
            raise RuntimeError(f"no multi-trial job {path} in this process: in-memory jobs serve in-process trials")
        return _JOBS[path]
    if config_class is None:
        raise TypeError("a job file needs the config class to rebuild its config (run_multitrial passes it)")
    file = Path(path)
    if not file.is_file() and relative and Path(relative).is_file():
        file = Path(relative)
    try:
        key = (str(file.resolve()), file.stat().st_mtime_ns, token)
    except OSError as err:
        raise _bad_job(file, f"cannot be read: {err}") from None
    if key not in _JOBS:
        _JOBS[key] = read_job(file, config_class, token)
    return _JOBS[key]


def run_trial(model: Any, job_path: str, job_relpath: str | None = None, job_token: str | None = None,
              config_class: type | None = None) -> None:
    """NNI's evaluator function: train and score the network of one sampled architecture.

    In-process trials get an in-memory job; trial processes a JSON job file, with the search's
    ``job_token`` and its ``config_class`` (NNI hands a class over by its import path, as it does this
    function; this module cannot import the search's config class itself: the search imports this module).
    """
    job = _load_job(job_path, job_relpath, job_token, config_class)
    if job.threads:
        torch.set_num_threads(job.threads)
    started = time.time()
    arch = decode_choices(dict(model.arch), job.multiples)
    row: dict[str, Any] = {"status": "ok", "arch": arch, "nni_trial": nni_trial_id(), "error": ""}
    if row["nni_trial"]:  # a trial process of the training-service engine: when it was launched
        import psutil

        row["process_started"] = psutil.Process().create_time()
    if job.deadline_wall is not None and started > job.deadline_wall:
        log.info("trial skipped: the search budget is spent (%s)", arch)
        _write_row(job, {**row, "status": "skipped", "error": "budget_seconds spent before the trial started"},
                   started)
        return
    try:
        spec = find_space(job.space)
        genotype = spec.to_genotype(arch, job.space_config, {})
        row["genotype_id"] = genotype.genotype_id()
        torch.manual_seed(job.config.seed)  # the same initial weights whichever trial or process builds it
        network = spec.make_network(genotype)
        row.update(measure_cost(network, job))
        checkpoint_dir = trial_checkpoint_dir(job, arch)
        if job.config.trial_epochs > 1:  # whose checkpoint this is, for a reader of the folder
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            (checkpoint_dir / TRIAL_OWNER).write_text(json.dumps(
                {"arch": arch, "nni_trial": row["nni_trial"], "started": started}, default=str))
        row.update(train_and_score(network, job, checkpoint_dir=checkpoint_dir))
        if not math.isfinite(row["val_psnr"]):
            raise FloatingPointError(f"validation PSNR is {row['val_psnr']}")
    except Exception as err:  # noqa: BLE001  (any failure is one failed trial, reported to NNI by the raise)
        row.update(status="failed", error=f"{type(err).__name__}: {err}"[:500])
        log.warning("trial failed (%s): %s", arch, row["error"])
        _write_row(job, row, started)
        shutil.rmtree(trial_checkpoint_dir(job, arch), ignore_errors=True)
        _release_memory(job)
        raise
    _write_row(job, row, started)
    shutil.rmtree(trial_checkpoint_dir(job, arch), ignore_errors=True)  # the row holds the trial now
    log.info("trial %s: val PSNR %.2f dB, SSIM %.4f, %d params (%.1f s)", row["genotype_id"], row["val_psnr"],
             row["val_ssim"], row["params"], time.time() - started)
    report_final_metric(row["val_psnr"])


TRIAL_OWNER = "trial.json"  # in a trial's checkpoint folder: its architecture, NNI trial id and start time


def trial_checkpoint_dir(job: TrialJob, arch: dict[str, Any]) -> Path:
    """Where a trial of ``arch`` keeps its last epoch: named by the architecture, so that the re-run of a killed
    search finds it when its strategy (replayed from the ledger) samples that architecture again."""
    digest = hashlib.sha256(arch_key(arch).encode()).hexdigest()[:16]
    return Path(job.run_dir) / TRIAL_CHECKPOINTS_DIR / digest


def train_and_score(network: torch.nn.Module, job: TrialJob, checkpoint_dir: Path | None = None
                    ) -> dict[str, float]:
    """Train ``network`` for ``trial_epochs`` with a fresh trainer; its validation PSNR and SSIM, and how many
    epochs it took from a checkpoint (``epochs_resumed``, kept in the trial's row).

    With ``checkpoint_dir`` and more than one epoch, ``last.ckpt`` there is written after every epoch and a
    trial that finds one continues from it: Lightning restores the weights, optimiser, schedule and epoch, and
    every epoch's data is a function of (seed, epoch), so it ends as an uninterrupted trial.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    config = job.config
    accelerator, devices = lightning_accelerator(torch.device(job.device))
    precision = resolve_precision(config.precision, job.device)
    callbacks: list[Any] = [] if job.threads else [ShareThreads(config.num_workers)]
    keep_epochs = checkpoint_dir is not None and config.trial_epochs > 1
    if keep_epochs:
        callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, filename="last", monitor=None, save_top_k=1,
                                         every_n_epochs=1, enable_version_counter=False))
    with _quiet_lightning(), warnings.catch_warnings():
        # fit without a validation loop, then validate once: Lightning warns about the first
        warnings.filterwarnings("ignore", message=r".*validation_step.*but have no.*val_dataloader.*")
        seed_everything(config.seed)  # every trial starts from the same generators
        optim = OptimConfig(lr=config.lr, weight_decay=config.weight_decay, min_lr=config.lr * 0.01,
                            cosine_epochs=config.trial_epochs)
        module = RestorationModule(network, loss=config.loss, optim=optim)
        resume = _usable_checkpoint(checkpoint_dir / "last.ckpt", module) if keep_epochs else None
        kept = 0 if resume is None else int(torch.load(resume, map_location="cpu", weights_only=True)["epoch"]) + 1
        if resume is not None:
            log.info("trial resumes from %s after %d epoch(s)", resume, kept)
        # every epoch's order and random crops are functions of (seed, epoch): a resumed trial sees the data
        # an uninterrupted one would
        train_loader = DataLoader(job.train_data, batch_size=config.batch_size, drop_last=True,
                                  sampler=EpochShuffle(len(job.train_data), config.seed),
                                  num_workers=config.num_workers)
        val_loader = DataLoader(job.val_data, batch_size=config.batch_size, num_workers=config.num_workers)
        trainer = pl.Trainer(max_epochs=config.trial_epochs, accelerator=accelerator, devices=devices,
                             logger=False, enable_checkpointing=keep_epochs, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, precision=precision.lightning,
                             gradient_clip_val=1.0, deterministic=False, callbacks=callbacks)
        trainer.fit(module, train_dataloaders=train_loader, ckpt_path=resume, **_weights_only_fit(trainer))
        scores = trainer.validate(module, dataloaders=val_loader, verbose=False)[0]
    return {"val_psnr": float(scores["val_psnr"]), "val_ssim": float(scores["val_ssim"]), "epochs_resumed": kept}


def _usable_checkpoint(path: Path, module: torch.nn.Module) -> Path | None:
    """``path`` if a trial can resume from it; a damaged one (killed while saving) is dropped: it only held
    part of one trial, which trains from its start instead."""
    if not path.is_file():
        return None
    try:
        check_resume_checkpoint(path, module)
    except UserError as err:
        log.warning("trial checkpoint dropped, the trial starts over: %s", err)
        path.unlink(missing_ok=True)
        return None
    return path


def measure_cost(network: torch.nn.Module, job: TrialJob) -> dict[str, float]:
    """Parameters and FLOPs (one forward pass at the training patch size) always; latency if asked."""
    size = job.config.data.patch_size
    shape = input_shape(job.space_config.frames, size, size)
    cost: dict[str, float] = {"params": count_parameters(network)}
    try:
        cost["flops"] = count_flops(network, shape)
    except Exception as err:  # noqa: BLE001  (an op torch cannot count: the column stays empty)
        log.warning("could not count FLOPs: %s", err)
        cost["flops"] = math.nan
    if job.cost == "latency":
        cost["latency_s"] = measure_latency(network, shape, device=job.device).median_s
        network.to("cpu")
    return cost


def _release_memory(job: TrialJob) -> None:
    gc.collect()
    if torch.device(job.device).type == "cuda":
        torch.cuda.empty_cache()


def _write_row(job: TrialJob, row: dict[str, Any], started: float) -> None:
    ended = time.time()
    row = {**row, "started": started, "ended": ended, "seconds": round(ended - started, 3)}
    folder = Path(job.run_dir) / TRIALS_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{started:.6f}-{uuid.uuid4().hex[:8]}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(row, default=str))
        tmp.replace(path)  # whole files only: the search process may read the folder at any time
    except OSError as err:  # a remote trial without the run folder: NNI still gets the metric
        log.warning("could not write the trial row to %s: %s", folder, err)


# --------------------------------------------------------------------------------------------------
# the ledger: the finished trials of a run, what a re-run resumes from

LEDGER_FORMAT = "nas-restore multi-trial ledger"
LEDGER_VERSION = 1
MAX_LEDGER_BYTES = 512 * 2**20  # some 100,000 trials: anything larger is not a ledger
# what a finished trial's score depends on: a re-run that changes any of them is refused (the ledger's
# trials would not compare with the new ones). max_trials, budget_seconds, parallel, training_service,
# num_workers and progress may change: a re-run with a larger max_trials or budget continues the search.
RESUME_KEYS = ("space", "preset", "space_settings", "resolved_space", "strategy", "strategy_options", "seed",
               "batch_size", "lr", "weight_decay", "loss", "data", "device", "precision", "trial_epochs", "objectives")
_REPLAYED_STATUSES = ("trained", "failed")  # NNI's statuses a strategy is told again; others are run again
_TRIAL_KEYS = {"index": (int, type(None)), "after": (int, type(None)), "session": int, "sample": dict, "arch": dict,
               "status": str, "metric": (int, float, type(None)), "row_file": (str, type(None)),
               "row": (dict, type(None)), "at_s": (int, float)}


def resume_settings(config: Any, space_config: Any, strategy_options: dict[str, Any]) -> dict[str, Any]:
    """The settings of :data:`RESUME_KEYS`, as plain data (the strategy's options with its defaults filled in)."""
    data = cfg.to_dict(config)
    data["resolved_space"] = space_config.to_dict()
    data["strategy_options"] = dict(strategy_options)
    return json.loads(json.dumps({k: data.get(k) for k in RESUME_KEYS}, default=str))


def arch_key(arch: dict[str, Any]) -> str:
    """An architecture's name in the ledger: its dict as canonical JSON."""
    return json.dumps(arch, sort_keys=True, default=str)


class Ledger:
    """``ledger.jsonl``: a header with the run's settings, a line per session (each start of the
    command), and a line per trial whose end the strategy saw, appended (flushed, fsynced) as it
    ends. A line is whole or, when a kill cut the last write short, dropped on the next read.

    A trial line holds the submission's place (``index``, and ``after``: the ends the strategy had
    seen then), NNI's sample, the architecture, the status and metric NNI got, the trial's own row
    (``row``, from ``trials/``, with its times in seconds of search) and ``at_s``, the search's
    seconds when it was recorded (a re-run's budget counts on from the last one).
    """

    def __init__(self, path: Path, header: dict[str, Any], sessions: list[dict[str, Any]],
                 trials: list[dict[str, Any]]):
        self.path, self.header, self.sessions, self.trials = Path(path), header, sessions, trials
        self._lock = threading.Lock()  # trial ends arrive on NNI's listener thread too

    @classmethod
    def create(cls, path: Path, settings: dict[str, Any]) -> "Ledger":
        header = {"kind": "header", "format": LEDGER_FORMAT, "version": LEDGER_VERSION, "settings": settings,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        tmp = Path(path).with_name(Path(path).name + ".tmp")
        tmp.write_text(json.dumps(header) + "\n")
        tmp.replace(path)
        return cls(path, header, [], [])

    @classmethod
    def read(cls, path: Path) -> "Ledger":
        """The ledger at ``path``, checked line by line; a torn last line (a kill mid-write) is cut off."""
        path = Path(path)
        if path.stat().st_size > MAX_LEDGER_BYTES:
            raise _bad_ledger(path, f"{path.stat().st_size / 2**20:.0f} MiB, a ledger holds a few kB per trial")
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:  # no newline at the end: the last write was cut short
            log.warning("%s: dropping its last, incomplete line (the search was killed while writing it)", path)
            lines.pop()
            with path.open("r+b") as handle:
                handle.truncate(len(raw) - len(raw.rsplit(b"\n", 1)[-1]))
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise _bad_ledger(path, f"line {number} is not JSON ({err})") from None
        if not records or not isinstance(records[0], dict) or records[0].get("format") != LEDGER_FORMAT:
            raise _bad_ledger(path, f"no {LEDGER_FORMAT!r} header")
        if records[0].get("version") != LEDGER_VERSION or not isinstance(records[0].get("settings"), dict):
            raise _bad_ledger(path, f"header version {records[0].get('version')!r} or settings not readable")
        sessions, trials = [], []
        for number, record in enumerate(records[1:], 2):
            kind = record.get("kind") if isinstance(record, dict) else None
            if kind == "session" and isinstance(record.get("session"), int) and \
                    isinstance(record.get("started"), (int, float)) and isinstance(record.get("offset_s"), (int, float)):
                sessions.append(record)
            elif kind == "trial" and not [k for k, kinds in _TRIAL_KEYS.items()
                                          if k not in record or isinstance(record[k], bool)
                                          or not isinstance(record[k], kinds)]:
                trials.append(record)
            else:
                raise _bad_ledger(path, f"line {number} is neither a session nor a trial record")
        return cls(path, records[0], sessions, trials)

    def append(self, record: dict[str, Any]) -> int:
        """Append one record (a whole line, flushed and fsynced); a trial's position in :attr:`trials`."""
        line = (json.dumps(record, default=str, allow_nan=True) + "\n").encode()
        with self._lock:
            with self.path.open("ab") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            if record.get("kind") == "session":
                self.sessions.append(record)
                return -1
            self.trials.append(record)
            return len(self.trials) - 1

    def elapsed_s(self) -> float:
        """The search's seconds up to its last recorded trial (what earlier sessions spent)."""
        return max((float(t["at_s"]) for t in self.trials), default=0.0)

    def session_times(self, wall: float) -> tuple[float, float]:
        """(started, offset_s) of the session a wall-clock time falls in (to place an unrecorded row)."""
        before = [s for s in self.sessions if s["started"] <= wall]
        if not before:
            return (self.sessions[0]["started"], 0.0) if self.sessions else (wall, 0.0)
        last = max(before, key=lambda s: s["started"])
        return float(last["started"]), float(last["offset_s"])


def _bad_ledger(path: Path, problem: str) -> RunRecordError:
    return RunRecordError(f"{path} is damaged ({problem}): it records the finished trials a re-run resumes from. "
                          "Restore it, or start the search over with --fresh (which deletes it)")


def open_ledger(run_dir: Path, settings: dict[str, Any], fresh: bool) -> tuple[Ledger, bool]:
    """The run's ledger and whether it is a resumed one; ``fresh`` (or no ledger) starts a new one.

    A new ledger clears the rows and the Pareto front a former run left in the folder. An existing
    one made with other :data:`RESUME_KEYS` settings is refused, naming the fields.
    """
    path = run_dir / LEDGER
    trials_dir = run_dir / TRIALS_DIR
    if path.exists() and not fresh:
        ledger = Ledger.read(path)
        changed = changed_fields(ledger.header["settings"], settings, keys=RESUME_KEYS)
        refuse_changed_settings(run_dir, "a multi-trial search's finished trials", changed,
                                "they would not compare with the trials of these settings",
                                "max_trials, budget_seconds, parallel, training_service, num_workers and progress "
                                "may change; or give --fresh to start over", recorded_in=path, error=ConfigError)
        return ledger, True
    if fresh and path.exists():
        log.info("--fresh: starting the multi-trial search over (the ledger and trial rows of %s are deleted)", run_dir)
    trials_dir.mkdir(parents=True, exist_ok=True)
    for old in [*trials_dir.glob("*.json"), run_dir / PARETO]:  # a former run's rows do not belong to this one
        old.unlink(missing_ok=True)
    return Ledger.create(path, settings), False


def _read_row(path: Path) -> dict[str, Any] | None:
    try:
        row = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("unreadable trial row %s: %s", path, err)
        return None
    if not isinstance(row, dict) or not isinstance(row.get("arch"), dict) or \
            not isinstance(row.get("started"), (int, float)) or not isinstance(row.get("ended"), (int, float)):
        log.warning("trial row %s lacks arch/started/ended: ignored", path)
        return None
    return row


ROW_GRACE_S = 30.0  # how long an end reported without a metric waits for the trial's row


class _Session:
    """One start of a multi-trial search over its ledger: records trial ends, answers replays, and
    knows which ledger trials make up this run's table."""

    def __init__(self, ledger: Ledger, trials_dir: Path, multiples: dict[str, dict[str, Any]], started_wall: float,
                 offset_s: float, session: int):
        self.ledger, self.trials_dir, self.multiples = ledger, trials_dir, multiples
        self.started_wall, self.offset_s, self.session = started_wall, offset_s, session
        self.used: list[int] = []   # ledger positions of this run's trials
        self.replayed = 0
        self._claimed = {t["row_file"] for t in ledger.trials if t["row_file"]}
        self._lock = threading.Lock()

    def key_of(self, sample: Any) -> str:
        return arch_key(decode_choices(dict(sample or {}), self.multiples))

    def now_s(self) -> float:
        return round(self.offset_s + time.time() - self.started_wall, 3)

    def finished(self) -> list[FinishedTrial]:
        """The ledger's finished trials, then the rows of trials whose end no earlier run recorded."""
        found = []
        for position, line in enumerate(self.ledger.trials):
            row = line["row"] or {}
            metric = line["metric"]
            if metric is None and line["status"] == "trained" and row.get("status") == "ok":
                metric = row.get("val_psnr")
            if line["status"] in _REPLAYED_STATUSES and row.get("status") != "skipped":
                found.append(FinishedTrial(key=arch_key(line["arch"]), status=line["status"], metric=metric,
                                           index=line["index"], after=line["after"], position=position, token=position))
        for path in sorted(self.trials_dir.glob("*.json")):
            if path.name in self._claimed:
                continue
            row = _read_row(path)
            if row is None or row.get("status") not in ("ok", "failed"):
                continue
            ok = row["status"] == "ok" and isinstance(row.get("val_psnr"), (int, float))
            found.append(FinishedTrial(key=arch_key(row["arch"]), status="trained" if ok else "failed",
                                       metric=float(row["val_psnr"]) if ok else None,
                                       position=len(self.ledger.trials) + len(found), token=(path.name, row)))
        return found

    def _times(self, row: dict[str, Any]) -> dict[str, Any]:
        started, offset = (self.started_wall, self.offset_s) if row["started"] >= self.started_wall else \
            self.ledger.session_times(row["started"])
        return {**row, "start_s": round(row["started"] - started + offset, 3),
                "end_s": round(row["ended"] - started + offset, 3)}

    def _own_row(self, key: str) -> tuple[str | None, dict[str, Any] | None]:
        """The row the trial of ``key`` wrote (the earliest not yet claimed by a ledger line)."""
        best = None
        for path in self.trials_dir.glob("*.json"):
            if path.name in self._claimed:
                continue
            row = _read_row(path)
            if row is not None and arch_key(row["arch"]) == key and (best is None or row["ended"] < best[1]["ended"]):
                best = (path.name, row)
        return best if best is not None else (None, None)

    def _record(self, index: int, after: int, sample: Any, arch: dict[str, Any], status: str, metric: float | None,
                row_file: str | None, row: dict[str, Any] | None) -> None:
        if row_file:
            self._claimed.add(row_file)
        record = {"kind": "trial", "index": index, "after": after, "session": self.session,
                  "sample": json.loads(json.dumps(dict(sample or {}), default=str)), "arch": arch, "status": status,
                  "metric": metric, "row_file": row_file, "row": None if row is None else self._times(row),
                  "at_s": self.now_s()}
        self.used.append(self.ledger.append(record))

    def on_end(self, index: int, after: int, sample: Any, status: str, metric: float | None) -> None:
        """A live trial ended: record it with its own row.

        NNI's training-service engine can report a trial's end without its metric, and before the trial has
        written its row (seen under load, right after a resumed run stopped an earlier run's processes): the
        row that follows within :data:`ROW_GRACE_S` is then taken, and its PSNR with it."""
        with self._lock:
            arch = decode_choices(dict(sample or {}), self.multiples)
            row_file, row = self._own_row(arch_key(arch))
            deadline = time.monotonic() + ROW_GRACE_S
            while row is None and metric is None and status == "trained" and time.monotonic() < deadline:
                time.sleep(0.25)
                row_file, row = self._own_row(arch_key(arch))
            if metric is None and row is not None and row.get("status") == "ok":
                log.warning("NNI reported the end of trial %s without its metric; taken from the trial's row",
                            row.get("nni_trial") or index)
                metric = row.get("val_psnr")
            self._record(index, after, sample, arch, status, metric, row_file, row)

    def on_replay(self, trial: FinishedTrial, index: int, after: int, sample: Any) -> None:
        """A finished trial answered from the ledger; one known only by its row is recorded now."""
        with self._lock:
            self.replayed += 1
            if isinstance(trial.token, int):
                self.used.append(trial.token)
                return
            row_file, row = trial.token
            self._record(index, after, sample, row["arch"], trial.status,
                         trial.metric, row_file, row)

    def rows(self) -> list[dict[str, Any]]:
        """This run's trials in the order their ends were seen, numbered from 0."""
        rows = []
        for number, position in enumerate(sorted(set(self.used))):
            line = self.ledger.trials[position]
            if line["row"] is not None:
                row = dict(line["row"])
            else:  # the trial could not write its row here (remote, no shared folder): what NNI got
                row = rows_from_nni([{"sample": line["sample"], "metric": line["metric"], "status": line["status"]}],
                                    self.multiples)[0]
                row["end_s"] = line["at_s"]
            for column in ("val_psnr", "val_ssim", "params", "flops", "latency_s", "seconds", "start_s", "end_s"):
                row.setdefault(column, math.nan)
            row.setdefault("genotype_id", "")
            row["trial"] = number
            rows.append(row)
        return rows


# --------------------------------------------------------------------------------------------------
# the search


def run_multitrial(ctx: Any, fresh: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run a multi-trial strategy for ``run_search``; NNI's arch dict of the chosen trial + metadata.

    The chosen trial is the best validation PSNR; with a cost objective that is the best-PSNR point of
    the Pareto front (the cheaper one on a PSNR tie), and the whole front goes to ``pareto.csv``.

    The run resumes: each trial's end goes to the ledger (:class:`Ledger`) as it happens; the same
    command run again (after a kill, say) first stops the NNI processes an interrupted run left
    (:func:`~nas_restore.nni_layer.runner.stop_recorded`), then lets the strategy replay its past
    from the ledger without training (:class:`~nas_restore.nni_layer.runner.LedgerReplay`) and trains
    only what is missing. ``fresh`` starts over instead.
    """
    config, run_dir = ctx.config, Path(ctx.run_dir)
    cost = cost_objective(config.objectives)
    if cost == "latency" and config.parallel > 1:
        log.warning("latency is measured while %d trials share the machine: compare it with care", config.parallel)
    choices, multiples = space_choices(ctx.space_spec.make_space(ctx.space_config))
    if not choices:
        raise ValueError(f"space {config.space!r} has no choices to search with these settings")
    stop_recorded(run_dir / PROCESSES)  # what a killed earlier run left: NNI's manager, its trials, its port
    options = dict(config.strategy_options)
    if "seed" in ctx.strategy_spec.defaults and options.get("seed") is None:
        options["seed"] = config.seed
    ledger, resumed = open_ledger(run_dir, resume_settings(config, ctx.space_config,
                                                           {**ctx.strategy_spec.defaults, **options}), fresh)
    trials_dir = run_dir / TRIALS_DIR
    trials_dir.mkdir(parents=True, exist_ok=True)
    now_wall = time.time()
    started_wall = now_wall - (time.perf_counter() - ctx.started)
    offset = ledger.elapsed_s()
    session = _Session(ledger, trials_dir, multiples, started_wall, offset, len(ledger.sessions) + 1)
    ledger.append({"kind": "session", "session": session.session, "started": started_wall, "offset_s": offset})
    finished = session.finished()
    remaining = None
    if config.budget_seconds is not None:
        remaining = config.budget_seconds - offset - (time.perf_counter() - ctx.started)
        if remaining <= 0 and not finished:
            raise ValueError(f"budget_seconds={config.budget_seconds} is spent before the first trial (data and space "
                             "set-up took longer): raise --budget-seconds")
        remaining = max(0.0, remaining)
    if resumed:
        log.info("resuming the multi-trial search in %s: %d finished trial(s) on record, %.0f s spent", run_dir,
                 len(finished), offset)
    threads = threads_per_job(config.parallel, config.num_workers) if config.parallel > 1 else None
    job = TrialJob(config=config, space=config.space, space_config=ctx.space_config, multiples=multiples,
                   train_data=ctx.train_data, val_data=ctx.val_data, run_dir=str(run_dir.resolve()),
                   device=str(ctx.device), started_wall=started_wall,
                   deadline_wall=None if remaining is None else now_wall + remaining, cost=cost, threads=threads)
    sequential = config.parallel == 1 and not config.training_service
    job_path = run_dir / JOB_FILE
    if sequential:  # trials run in this process: no file, the job (datasets included) stays in memory
        arguments = {"job_path": f"{_MEMORY}{uuid.uuid4().hex}", "job_relpath": None}
        _JOBS[arguments["job_path"]] = job
    else:  # plain JSON; each trial process rebuilds the datasets from the config (read_job)
        token = uuid.uuid4().hex
        job_path = write_job(job, job_path, token).resolve()
        relative = os.path.relpath(job_path, Path.cwd()) if job_path.is_relative_to(Path.cwd()) else None
        arguments = {"job_path": str(job_path), "job_relpath": relative, "job_token": token,
                     "config_class": type(config)}
    strategy = ctx.strategy_spec.build(options)
    log.info("multi-trial search: %s, %d choices, up to %d trials of %d epoch(s), %d at once%s", config.strategy,
             len(choices), config.max_trials, config.trial_epochs, config.parallel,
             "" if remaining is None else f", {remaining:.0f} s left")
    engine = "sequential" if sequential else "training_service"
    try:
        engine, _ = run_multitrial_experiment(
            ChoiceSpace(choices), run_trial, arguments, strategy, run_dir / NNI_DIR, max_trials=config.max_trials,
            max_seconds=remaining, parallel=config.parallel, training_service=config.training_service,
            finished=finished, key_of=session.key_of, on_end=session.on_end, on_replay=session.on_replay,
            process_file=run_dir / PROCESSES)
    finally:
        rows = session.rows()
        write_trials(rows, run_dir / TRIALS)
        write_trial_anytime(rows, config.trial_epochs, run_dir / ANYTIME)
        job_path.unlink(missing_ok=True)
        _JOBS.pop(arguments["job_path"], None)
    unused = len(finished) - session.replayed
    if unused > 0:
        log.info("%d finished trial(s) of an earlier run were not proposed again by the strategy (their order "
                 "depended on trial timing): they stay in the ledger, outside this run's tables", unused)
    arch, metadata = _choose(rows, cost, config, engine, run_dir)
    metadata.update(strategy_seed=options.get("seed"), resumed_trials=session.replayed, sessions=session.session)
    return arch, metadata


def _choose(rows: list[dict[str, Any]], cost: str | None, config: Any, engine: str,
            run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    done = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] == "failed"]
    if not done:
        raise RuntimeError(f"no trial finished ({len(failed)} failed, {len(rows) - len(failed)} skipped): see "
                           f"{run_dir / 'trials.csv'} and search.log")
    metadata: dict[str, Any] = {
        "engine": engine, "parallel": config.parallel, "objectives": list(config.objectives),
        "trials_run": len(done) + len(failed), "trials_failed": len(failed),
        "trial_epochs": config.trial_epochs,
        "search_cost_epochs": (len(done) + len(failed)) * config.trial_epochs,
    }
    if cost is None:
        best = max(done, key=lambda r: (r["val_psnr"], -r["trial"]))
    else:
        column = COST_COLUMNS[cost]
        front = [done[i] for i in pareto_front([(r["val_psnr"], r.get(column, math.nan)) for r in done])]
        write_pareto(front, cost, COST_COLUMNS[cost], run_dir / PARETO)
        candidates = front or done
        best = max(candidates, key=lambda r: (r["val_psnr"], -_num(r.get(column)), -r["trial"]))
        metadata["pareto"] = [{"trial": r["trial"], "genotype_id": r["genotype_id"], "val_psnr": r["val_psnr"],
                               cost: r.get(column)} for r in front]
        metadata["selection"] = "best validation PSNR on the Pareto front"
    metadata.update(best_trial=best["trial"], best_val_psnr=best["val_psnr"], best_val_ssim=best["val_ssim"])
    log.info("best trial %d: %s, val PSNR %.2f dB", best["trial"], best["genotype_id"], best["val_psnr"])
    return dict(best["arch"]), metadata


def _num(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.inf
    return math.inf if math.isnan(number) else number


def rows_from_nni(records: list[dict[str, Any]], multiples: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Trial rows from NNI's own record of the trials (no SSIM, cost or times: NNI keeps PSNR only)."""
    rows = []
    for i, record in enumerate(records):
        ok = record["status"] == "trained" and record["metric"] is not None
        rows.append({"trial": i, "status": "ok" if ok else "failed", "genotype_id": "",
                     "arch": decode_choices(record["sample"], multiples),
                     "val_psnr": float(record["metric"]) if ok else math.nan, "val_ssim": math.nan,
                     "params": math.nan, "flops": math.nan, "latency_s": math.nan, "seconds": math.nan,
                     "start_s": math.nan, "end_s": math.nan, "nni_trial": "",
                     "error": "" if ok else f"NNI status {record['status']} (see the NNI trial logs)"})
    return rows
