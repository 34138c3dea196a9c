"""Argo Workflows for `oracle submit --target argo`: the data → tokenize → train → publish pipeline."""
