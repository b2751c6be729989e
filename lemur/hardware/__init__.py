"""Facts about the machine: CPU features and thread binding, GPU datasheets."""
