"""The classic SimpleRNN, with fused_rnn.RNN in place of torch.nn.RNN: many-to-one, the Linear head
reads the last step's output.

    python examples/simple_rnn.py
"""
import torch
from torch import nn

import fused_rnn


class SimpleRNN(nn.Module):
    def __init__(self, input_size=10, hidden_size=20, output_size=5):
        super().__init__()
        self.rnn = fused_rnn.RNN(input_size, hidden_size, batch_first=True)  # was nn.RNN(...)
        self.fc = nn.Linear(hidden_size, output_size)

    def forward(self, x):          # x: [B, T, I]
        out, h_n = self.rnn(x)     # out: [B, T, H], h_n: [1, B, H]
        return self.fc(out[:, -1])  # [B, output_size], from the last step


if __name__ == "__main__":
    torch.manual_seed(0)
    model = SimpleRNN()
    print(model)
    x = torch.randn(3, 4, 10)  # batch 3, length 4, 10 features
    y = model(x)
    print("output", tuple(y.shape))
    print(y)
