"""Data curation and more data (curate.py): Algorithm 1 (vocabulary.py, selection.py, collectors.py,
chat.py, algorithm1.py, fig8.py), rejection-sampling finetuning (rft.py, rft_sampling.py) and SFT data
scaling (scaling.py)."""
