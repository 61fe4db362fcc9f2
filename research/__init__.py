"""The learnability research: training VRS-HQ from scratch on synthetic videos, its pretraining stages,
from-scratch aids, presets, probes and diagnostics. The product (vrshq/, pipelines/, jobs/, schemas/) never
imports this package."""
