"""``bncheck recalibrate``: exact re-estimation of BatchNorm statistics, verified, written back.

``command`` chooses the layers, estimates their statistics with the probe's passes
(``bncheck.probe.measure.estimate``), verifies the result on held-out data and decides whether
to write; ``write`` puts the statistics into a copy of the file without touching anything else.
"""
