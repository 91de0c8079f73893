"""Single-crystal X-ray TDS: the observable :class:`TDSIntensity` and its forward models (exact
on a periodic supercell or an infinite crystal, one phonon, the sampled estimator), polarization
and absorption corrections, the powder X-ray TDS, and simulation on a volume's grid."""
