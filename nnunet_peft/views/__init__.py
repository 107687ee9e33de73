"""Tri-planar 2-D nnU-Net: one plans file per view, nnU-Net's ensembling of the views."""
