"""How sweeps are run, tracked, resumed and reported: the `frost` command line and its drivers."""
