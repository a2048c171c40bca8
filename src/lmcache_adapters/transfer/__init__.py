"""KV transfer with torch: tensor-handle unpickling, shared CPU / CUDA IPC tensors, gather and scatter."""
