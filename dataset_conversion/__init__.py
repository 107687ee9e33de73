"""Converters from the layouts datasets ship in to nnU-Net's raw format (`nnunet-peft convert`).

``formats`` holds one small class per source layout (registry ``FORMATS``); ``pipeline.convert``
does the shared work: check every case, write to a temporary folder, move it into place, write
dataset.json, optional cross-validation splits and a summary.
"""
