"""``bncheck recalibrate``: exact re-estimation of BatchNorm statistics, written back in place.

``estimate`` computes the statistics (TensorFlow, imported inside functions), ``write`` puts them
into a copy of the file without touching anything else, ``command`` ties both to the probe's
verdict before and after.
"""
