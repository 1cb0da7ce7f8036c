"""IoU-Net (Jiang et al., ECCV 2018) on detectron2."""
