"""DC Loss, IoU-classification-aware assignment and CL-balanced NMS on RetinaNet.
(Package being built; see the project README.)"""


def add_dc_loss_config(cfg):
    """Add DC Loss's keys to `cfg` (none yet)."""
