"""Downstream evaluation of backbones: feature extraction through the DALI evaluation pipeline, and
the classifiers that score the features (linear SVM, linear probe, kNN), with the result files
that `xkd eval report` collates."""
