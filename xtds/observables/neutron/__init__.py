"""Neutron scattering from the same lattice dynamics: coherent one-phonon S(Q, E) and χ'' of a
single crystal (:mod:`~xtds.observables.neutron.sqe`), powder spectra from a symmetry-reduced
k-mesh (:mod:`~xtds.observables.neutron.powder`) and the multiphonon terms
(:mod:`~xtds.observables.neutron.multiphonon`)."""
