"""Neutron scattering from the same lattice dynamics: coherent one-phonon S(Q, E) and χ'' of a
single crystal (:mod:`~xtds.observables.neutron.sqe`), powder spectra from a symmetry-reduced
k-mesh (:mod:`~xtds.observables.neutron.powder`), the multiphonon terms
(:mod:`~xtds.observables.neutron.multiphonon`), incoherent scattering
(:mod:`~xtds.observables.neutron.incoherent`), phonon linewidths
(:mod:`~xtds.observables.neutron.linewidth`) and instrument resolutions from resins
(:mod:`~xtds.observables.neutron.resolution`)."""
