"""The bottom floor: paths and small files, console output, errors, sharding, the runtime
set-up, multi-host helpers, timers, plots, parameter trees and exported weights. Nothing here
knows a model, an adapter or a training job.
"""
