"""The five paper projects, each installed as d2align.projects.<name> from projects/<Name>/<name>/."""
