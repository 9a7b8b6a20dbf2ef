"""Run the PyTorch reference (baseline, the published per-image reference, static or dynamic
ALGM) through the `Runner` interface."""

from __future__ import annotations

import numpy as np
import torch

from algm_export.merging.driver import AlgmModel, check_finite_array
from algm_export.runtimes.base import RunOutput, Runner


class TorchRunner(Runner):
    """`model`: a `SegModel` or an `AlgmModel` (`apply_algm`). `assignments`: also return the
    assignment map after every merge step (`RunOutput.assignments`, for merge pictures).
    `takes_threshold`: the model runs dynamic token mode and `infer(x, threshold=t)` sets its
    CLAP threshold per call (the reference of a threshold-input graph at each threshold).
    `merge_inputs`: also return the tokens entering every merge step (`RunOutput.merge_inputs`,
    for the decision margins of `merging.margins`)."""

    backend = "torch"

    def __init__(self, model, name="torch", device="cpu", assignments: bool = False,
                 takes_threshold: bool = False, merge_inputs: bool = False):
        self.model = model.eval().to(device)
        self.device = device
        self.name = name
        self.assignments = bool(assignments)
        self.merge_inputs = bool(merge_inputs) and isinstance(model, AlgmModel)
        if self.merge_inputs:
            model.record_inputs = True
        if takes_threshold and not (isinstance(model, AlgmModel) and model.dynamic):
            raise ValueError("takes_threshold needs an AlgmModel in dynamic token mode")
        self.takes_threshold = bool(takes_threshold)

    def _infer(self, image, threshold=None) -> RunOutput:
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(image)
        check_finite_array(image.detach().cpu().numpy())
        x = image.to(self.device).float()
        with torch.no_grad():
            if self.takes_threshold:
                if threshold is None:
                    from algm_export.core.errors import InputError

                    raise InputError(f"{self.name} takes the CLAP threshold as an input: pass threshold=<float> "
                                     "or one per image")
                if isinstance(threshold, np.ndarray):
                    threshold = torch.from_numpy(threshold)
                logits = self.model(x, threshold)
            else:
                logits = self.model(x)
        out = RunOutput(logits.float().cpu().numpy())
        if isinstance(self.model, AlgmModel):
            st = torch.stack([self.model.merge_stats["merges"], self.model.merge_stats["forced"]], -1)
            out.merge_stats = st.to(torch.int32).cpu().numpy()
            out.tokens = self.model.merge_stats["tokens"].cpu().numpy()
            if self.assignments:
                out.assignments = [a.detach().cpu().numpy() for a in self.model.assignments]
            if self.merge_inputs and self.model.merge_inputs:
                out.merge_inputs = [{k: v.cpu().numpy() for k, v in rec.items()} for rec in self.model.merge_inputs]
                self.model.merge_inputs = []
        return out
