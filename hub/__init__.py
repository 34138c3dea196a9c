"""The Hugging Face Hub publish gate. Filled by the Hub publishing issue (#7)."""
