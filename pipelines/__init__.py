"""Ray Data and Ray Train building blocks of vrshq, in subpackages that follow the data: ``inference``,
``training``, ``evaluation`` and ``io`` (storage and the output tables)."""
