"""Mutual Guidance (Zhang et al., ACCV 2020) label assignment on detectron2."""
