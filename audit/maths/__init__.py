"""The maths the attacks and the report share: Hessian-vector products and linear solvers
(:mod:`~audit.maths.autodiff`), reverse-mode hypergradients of unrolled training
(:mod:`~audit.maths.hypergrad`) and poisonability thresholds with GradPC targets
(:mod:`~audit.maths.poisonability`)."""
