"""ILT tool ``demo``: ``make demo`` / ``python -m ilt_demo`` trains the tiny preset on Hebrew news."""
