"""SFT: best-fit sequence packing and the supervised fine-tuning loop."""
