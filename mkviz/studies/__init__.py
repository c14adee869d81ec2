"""Layer 6, studies: sweeps of training runs and their pages. Imports the layers below.

    sweep_config    the sweep file: read, checked, expanded into runs
    sweep           `mkviz sweep`: run them (resumable, in parallel), then write the page
    sweep_report    the generated blocks of the page (`--check` verifies them); sweep_analysis: its tables, plots
    stats           tests, intervals, power
"""
