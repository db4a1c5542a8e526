"""Shared test fixtures. Everything runs offline on the CPU with tiny models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist (pyproject's addopts: -n 2) the cores are shared by the workers.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture(scope="session")
def mnist5k():
    from galot_core.data.mnist5k import load_mnist5k

    return load_mnist5k()


@pytest.fixture(scope="session")
def tiny_digits(mnist5k):
    """A 10-class digit task small enough to train in a second: 300-image pool, 200 test images."""
    from galot_core.data.base import Dataset

    def take(s, per_class):
        idx = torch.cat([torch.nonzero(s.labels == c).flatten()[:per_class] for c in range(10)])
        return s.subset(torch.sort(idx).values)

    return Dataset(name="tiny_digits", pool=take(mnist5k.pool, 30), test=take(mnist5k.test, 20),
                   class_names=list(mnist5k.class_names), natural=False, mean=mnist5k.mean, std=mnist5k.std)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and tests then do not fight over the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def finished_gal_run(tmp_path_factory, tiny_digits, tiny_sd_folder):
    """A completed 2-cycle al+gal experiment on the tiny task (tests/test_experiment_gal.py::gal_cfg).

    Shared, so treat it as read-only: tests that damage a run work on a copy."""
    from galot_core.experiment import Experiment
    from tests.test_experiment_gal import gal_cfg

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = gal_cfg(tmp_path_factory.mktemp("finished"), tiny_sd_folder)
    exp = Experiment(cfg, dataset=tiny_digits)
    exp.run()
    torch.set_num_threads(n)
    return cfg, exp


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory):
    """A tiny random Stable Diffusion pipeline saved as a diffusers folder (built offline from configs)."""
    from galot_core.t2i.tiny import tiny_sd_pipeline

    folder = tmp_path_factory.mktemp("tiny-sd") / "pipe"
    tiny_sd_pipeline(scheduler="ddim").save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session", autouse=True)
def isolated_services(tmp_path_factory):
    """MLflow and Prefect state of the test session live in a temp folder, never in the repo or ~.

    One SQLite MLflow database for the whole session (each new database pays MLflow's
    migrations); Prefect gets a temporary PREFECT_HOME. Subprocesses inherit both.
    """
    root = tmp_path_factory.mktemp("services")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["PREFECT_HOME"] = str(root / "prefect-home")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    yield root


@pytest.fixture(autouse=True)
def prefect_console_on_an_open_stream():
    """Prefect binds its console log handler to the sys.stderr of the moment (on import, and when a
    server starts in this process); under capsys that stream is closed when the test ends, and a later
    flow run's logging would fail on it. After each test, such a handler writes to sys.stderr again
    (whichever order a worker runs the tests in)."""
    yield
    import logging
    import sys

    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for handler in (h for logger in loggers for h in getattr(logger, "handlers", ())):
        if type(handler).__name__ == "PrefectConsoleHandler" and getattr(handler.stream, "closed", False):
            handler.stream = sys.stderr  # (not setStream: it flushes the closed one)
            handler.console.file = sys.stderr


@pytest.fixture(scope="session")
def prefect_api(isolated_services):
    """A temporary Prefect API (SQLite) for in-process flow runs; its URL, for subprocesses."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def digit_folder(tmp_path_factory, mnist5k):
    """A user's unlabelled folder: 60 real digits as PNGs in one flat folder, file names that say
    nothing about the class (the truth kept aside, for the "person" of the tests), and a labelled
    test folder of 20 digits, one sub-folder per class."""
    from PIL import Image

    root = tmp_path_factory.mktemp("digits")
    names = list(mnist5k.class_names)
    truth = {}

    def write_png(path, image):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(path)

    for c in range(10):
        for k, i in enumerate((mnist5k.pool.labels == c).nonzero().flatten()[:6].tolist()):
            name = f"scan_{c * 7 + k * 3:03d}.png"
            write_png(root / "images" / name, mnist5k.pool.images[i])
            truth[name] = names[c]
        for k, i in enumerate((mnist5k.test.labels == c).nonzero().flatten()[:2].tolist()):
            write_png(root / "test" / names[c] / f"{k}.png", mnist5k.test.images[i])
    return root, names, truth
