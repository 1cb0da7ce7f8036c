"""Mixed precision on the CPU: `SOLVER.AMP.ENABLED` trains under bfloat16 autocast there.

detectron2's `AMPTrainer` is CUDA-only (float16 autocast with a gradient scaler). On the CPU,
PyTorch's autocast runs in bfloat16, whose exponent range is float32's, so no gradient scaler
is needed: `CPUAutocastTrainer` is `SimpleTrainer` with the forward pass (model and loss sum)
under `torch.autocast("cpu", dtype=torch.bfloat16)`. The backward pass and the optimizer step
stay in float32 (the parameters are float32; autocast casts per op). Evaluation runs in
float32, as detectron2 evaluates an AMP-trained model.
"""

import time

import torch
from detectron2.engine import SimpleTrainer

__all__ = ["CPUAutocastTrainer", "CPU_AMP_DTYPE"]

CPU_AMP_DTYPE = torch.bfloat16


class CPUAutocastTrainer(SimpleTrainer):
    """`SimpleTrainer` whose forward pass runs under bfloat16 autocast on the CPU."""

    def run_step(self):
        assert self.model.training, "[CPUAutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cpu", dtype=CPU_AMP_DTYPE):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses, loss_dict = loss_dict, {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()
