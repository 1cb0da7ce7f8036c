"""CPM R-CNN (Zhu et al.) on detectron2: cascade grid-guided localization, IoU Scoring Module,
Resampling Scoring Module and the fused score. (Package being built; see the project README.)"""


def add_cpm_rcnn_config(cfg):
    """Add CPM R-CNN's keys to `cfg` (none yet)."""
