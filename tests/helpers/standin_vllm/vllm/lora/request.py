"""Stand-in for vllm.lora.request (see vllm/__init__.py)."""


class LoRARequest:
    def __init__(self, name, lora_id, path):
        self.name, self.lora_id, self.path = name, lora_id, path
