"""Test helpers: stand-ins for services the tests cannot reach (an AlpacaEval judge, the
Hugging Face Hub) and the script that runs several sharded cases in one launch."""
