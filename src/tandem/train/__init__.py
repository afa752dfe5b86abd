"""Training the sufficiency classifier from probe tables: rows (`data`), fitting with grouped
cross-validation (`fit`) and choosing operating points on a held-out table (`calibrate`).

Fitting needs scikit-learn (`pip install 'tandem[train]'`); the classifier it writes does not.
"""
