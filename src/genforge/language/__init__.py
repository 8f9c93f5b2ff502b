"""Language models below their task (tasks/language.py): generation as text pieces with stop strings, and scoring in
bits per character beside general-purpose compressors."""
