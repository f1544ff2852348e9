"""Built-in tracking sink ``tensorboard``: TensorBoard event files, one series per
training (``<log_dir>/<label>/``), written as the epochs come; at the end the run's
tables (as text) and figures (as images) under ``<log_dir>/results/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from mi_probe.builtin.trackers._common import markdown_table, require
from mi_probe.plugin import hookimpl


class TensorBoardParams(BaseModel):
    """TensorBoard event files (needs the [tensorboard] extra). View them live with
    ``tensorboard --logdir <log_dir>``."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["tensorboard"] = "tensorboard"
    log_dir: str | None = Field(
        None, description="folder of the event files; None: <run dir>/tensorboard. A "
        "shared folder gets one subfolder per run: <log_dir>/<run name>/<run id>")


class TensorBoardTracker:
    def __init__(self, params: TensorBoardParams) -> None:
        self.params = params
        self.root: Path | None = None
        self.writers: dict[str, Any] = {}

    def start(self, run: Any) -> None:
        require("tensorboard", "tensorboard", "tensorboard")
        if self.params.log_dir is None:
            self.root = Path(run.run_dir) / "tensorboard"
        else:
            self.root = (Path(self.params.log_dir).expanduser() / run.name
                         / Path(run.run_dir).name)
        spec = "\n".join(f"    {line}" for line in _yaml(run.spec).splitlines())
        self._writer("run").add_text("spec", spec, 0)
        self._writer("run").add_text("metadata", "\n\n".join(
            f"**{k}**: {v}" for k, v in run.metadata.items()), 0)
        self._writer("run").flush()

    def _writer(self, label: str) -> Any:
        if label not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            assert self.root is not None  # start() comes first
            self.writers[label] = SummaryWriter(log_dir=str(self.root / label))
        return self.writers[label]

    def log_epoch(self, label: str, epoch: int, values: Mapping[str, float]) -> None:
        writer = self._writer(label)
        for name, value in values.items():
            writer.add_scalar(name, value, epoch)
        writer.flush()  # live: TensorBoard shows the epoch now, not at the end

    def log_results(self, run_dir: Path, tables: Mapping[str, Any],
                    figures: Sequence[Path]) -> None:
        import numpy as np
        from PIL import Image

        writer = self._writer("results")
        for name, frame in sorted(tables.items()):
            writer.add_text(f"table/{name}", markdown_table(frame), 0)
        for path in figures:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            writer.add_image(f"figure/{path.stem}", pixels, 0, dataformats="HWC")
        writer.flush()

    def close(self, status: str) -> None:
        if self.writers:
            self._writer("run").add_text("status", status, 0)
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


def _yaml(spec: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(spec), sort_keys=False)


@hookimpl
def mi_probe_register_trackers(register):
    register("tensorboard", TensorBoardTracker, TensorBoardParams)
