"""Clients: two training scripts written the way pytorch/examples writes them, which users copy
(written in that style here, not copied): mnist/main.py (a CNN with conv, dropout and log_softmax,
Adadelta, StepLR, DataLoader, train() / test() per epoch) and word_language_model (a Corpus of
tokenized text files, batchify, get_batch with truncated BPTT, an LSTM RNNModel with
repackage_hidden, gradient clipping, a hand-written SGD update, evaluate, learning-rate annealing).
Synthetic data stands in for the downloads (MNIST, Wikitext-2), made from seeds in the script.

Each runs on the default allocator and on this one in the same test, with PyTorch's default two
threads; compared bit for bit: every logged loss (float.hex), test / validation losses, accuracy
and the trained parameters (sha256 of the state dict).
"""
from __future__ import annotations

MNIST = """
    import argparse
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.optim as optim
    from torch.optim.lr_scheduler import StepLR
    from torch.utils.data import DataLoader, TensorDataset


    class Net(nn.Module):
        def __init__(self):
            super(Net, self).__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, 1)
            self.conv2 = nn.Conv2d(32, 64, 3, 1)
            self.dropout1 = nn.Dropout(0.25)
            self.dropout2 = nn.Dropout(0.5)
            self.fc1 = nn.Linear(9216, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = self.conv1(x)
            x = F.relu(x)
            x = self.conv2(x)
            x = F.relu(x)
            x = F.max_pool2d(x, 2)
            x = self.dropout1(x)
            x = torch.flatten(x, 1)
            x = self.fc1(x)
            x = F.relu(x)
            x = self.dropout2(x)
            x = self.fc2(x)
            output = F.log_softmax(x, dim=1)
            return output


    def train(args, model, device, train_loader, optimizer, epoch, log):
        model.train()
        for batch_idx, (data, target) in enumerate(train_loader):
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            output = model(data)
            loss = F.nll_loss(output, target)
            loss.backward()
            optimizer.step()
            if batch_idx % args.log_interval == 0:
                log.append(loss.item())


    def test(model, device, test_loader):
        model.eval()
        test_loss = 0
        correct = 0
        with torch.no_grad():
            for data, target in test_loader:
                data, target = data.to(device), target.to(device)
                output = model(data)
                test_loss += F.nll_loss(output, target, reduction="sum").item()
                pred = output.argmax(dim=1, keepdim=True)
                correct += pred.eq(target.view_as(pred)).sum().item()
        test_loss /= len(test_loader.dataset)
        return test_loss, correct


    def synthetic_mnist(n, seed):
        \"\"\"Stands in for datasets.MNIST: a random 28x28 template per digit plus noise, normalized.\"\"\"
        g = torch.Generator().manual_seed(seed)
        templates = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        target = torch.randint(0, 10, (n,), generator=g)
        data = (templates[target] + 0.7 * torch.rand(n, 1, 28, 28, generator=g)).clamp(0, 1)
        return TensorDataset((data - 0.1307) / 0.3081, target)


    def main():
        parser = argparse.ArgumentParser(description="PyTorch MNIST Example")
        parser.add_argument("--batch-size", type=int, default=64)
        parser.add_argument("--test-batch-size", type=int, default=256)
        parser.add_argument("--epochs", type=int, default=2)
        parser.add_argument("--lr", type=float, default=1.0)
        parser.add_argument("--gamma", type=float, default=0.7)
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--log-interval", type=int, default=1)
        args = parser.parse_args([])
        torch.manual_seed(args.seed)
        device = torch.device("cpu")
        train_loader = DataLoader(synthetic_mnist(640, 1), batch_size=args.batch_size, shuffle=True)
        test_loader = DataLoader(synthetic_mnist(512, 2), batch_size=args.test_batch_size)
        model = Net().to(device)
        optimizer = optim.Adadelta(model.parameters(), lr=args.lr)
        scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
        log, tests = [], []
        for epoch in range(1, args.epochs + 1):
            train(args, model, device, train_loader, optimizer, epoch, log)
            tests.append(test(model, device, test_loader))
            scheduler.step()
        report(losses=hexes(log), test_losses=hexes(t[0] for t in tests),
               correct=[t[1] for t in tests], lr=hexes([scheduler.get_last_lr()[0]]),
               state=digest(model.state_dict()),
               pages=sorted({where(p) for p in model.parameters()} |
                            {where(s["square_avg"]) for s in optimizer.state.values()}))


    if __name__ == "__main__":
        main()
"""


def test_mnist_example_style_script(pools, twin):
    """Two epochs of 10 steps on synthetic MNIST-like data. Proves: every step's loss, both
    epochs' test loss and correct count, the StepLR learning rate and the trained parameters equal
    to the default's; the model learned (second-epoch accuracy well above chance); parameters and
    Adadelta state on 2 MiB pages in the allocator run, not in the default's."""
    pools.ensure_free("2M", 128)
    default, ours = twin.both(MNIST, timeout=240)
    assert len(ours["losses"]) == 20 and ours["correct"][-1] > 512 * 0.5, ours["correct"]
    for key in ("losses", "test_losses", "correct", "lr", "state"):
        assert ours[key] == default[key], key
    assert ours["pages"] == ["2M"] and "2M" not in default["pages"]


WORD_LM = """
    import argparse, math, random
    import torch.nn as nn


    class Dictionary(object):
        def __init__(self):
            self.word2idx = {}
            self.idx2word = []

        def add_word(self, word):
            if word not in self.word2idx:
                self.idx2word.append(word)
                self.word2idx[word] = len(self.idx2word) - 1
            return self.word2idx[word]

        def __len__(self):
            return len(self.idx2word)


    class Corpus(object):
        def __init__(self, path):
            self.dictionary = Dictionary()
            self.train = self.tokenize(os.path.join(path, "train.txt"))
            self.valid = self.tokenize(os.path.join(path, "valid.txt"))
            self.test = self.tokenize(os.path.join(path, "test.txt"))

        def tokenize(self, path):
            with open(path, "r", encoding="utf8") as f:
                for line in f:
                    for word in line.split() + ["<eos>"]:
                        self.dictionary.add_word(word)
            with open(path, "r", encoding="utf8") as f:
                idss = []
                for line in f:
                    ids = [self.dictionary.word2idx[word] for word in line.split() + ["<eos>"]]
                    idss.append(torch.tensor(ids).type(torch.int64))
                ids = torch.cat(idss)
            return ids


    class RNNModel(nn.Module):
        def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5, tie_weights=False):
            super(RNNModel, self).__init__()
            self.ntoken = ntoken
            self.drop = nn.Dropout(dropout)
            self.encoder = nn.Embedding(ntoken, ninp)
            self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
            self.decoder = nn.Linear(nhid, ntoken)
            if tie_weights:
                self.decoder.weight = self.encoder.weight
            self.init_weights()
            self.rnn_type, self.nhid, self.nlayers = rnn_type, nhid, nlayers

        def init_weights(self):
            initrange = 0.1
            nn.init.uniform_(self.encoder.weight, -initrange, initrange)
            nn.init.zeros_(self.decoder.bias)
            nn.init.uniform_(self.decoder.weight, -initrange, initrange)

        def forward(self, input, hidden):
            emb = self.drop(self.encoder(input))
            output, hidden = self.rnn(emb, hidden)
            output = self.drop(output)
            decoded = self.decoder(output).view(-1, self.ntoken)
            return nn.functional.log_softmax(decoded, dim=1), hidden

        def init_hidden(self, bsz):
            weight = next(self.parameters())
            return (weight.new_zeros(self.nlayers, bsz, self.nhid),
                    weight.new_zeros(self.nlayers, bsz, self.nhid))


    def write_synthetic_corpus(path, seed=0):
        \"\"\"Stands in for Wikitext-2: sentences from a random bigram model over 200 words.\"\"\"
        rng = random.Random(seed)
        words = ["w%d" % i for i in range(200)]
        follow = {w: rng.sample(words, 4) for w in words}
        os.makedirs(path, exist_ok=True)
        for name, lines in (("train.txt", 800), ("valid.txt", 60), ("test.txt", 60)):
            with open(os.path.join(path, name), "w") as f:
                for _ in range(lines):
                    w, sentence = rng.choice(words), []
                    for _ in range(rng.randint(5, 25)):
                        sentence.append(w)
                        w = rng.choice(follow[w])
                    f.write(" ".join(sentence) + "\\n")


    def batchify(data, bsz):
        nbatch = data.size(0) // bsz
        data = data.narrow(0, 0, nbatch * bsz)
        data = data.view(bsz, -1).t().contiguous()
        return data


    def repackage_hidden(h):
        if isinstance(h, torch.Tensor):
            return h.detach()
        else:
            return tuple(repackage_hidden(v) for v in h)


    def get_batch(source, i, bptt):
        seq_len = min(bptt, len(source) - 1 - i)
        data = source[i:i + seq_len]
        target = source[i + 1:i + 1 + seq_len].view(-1)
        return data, target


    def evaluate(model, data_source, args, ntokens, criterion):
        model.eval()
        total_loss = 0.
        hidden = model.init_hidden(args.eval_batch_size)
        with torch.no_grad():
            for i in range(0, data_source.size(0) - 1, args.bptt):
                data, targets = get_batch(data_source, i, args.bptt)
                output, hidden = model(data, hidden)
                hidden = repackage_hidden(hidden)
                total_loss += len(data) * criterion(output, targets).item()
        return total_loss / (len(data_source) - 1)


    def train(model, train_data, args, ntokens, criterion, lr, log):
        model.train()
        hidden = model.init_hidden(args.batch_size)
        for batch, i in enumerate(range(0, train_data.size(0) - 1, args.bptt)):
            data, targets = get_batch(train_data, i, args.bptt)
            model.zero_grad()
            hidden = repackage_hidden(hidden)
            output, hidden = model(data, hidden)
            loss = criterion(output, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
            log.append(loss.item())


    def main():
        parser = argparse.ArgumentParser(description="PyTorch Wikitext-2 RNN/LSTM Language Model")
        parser.add_argument("--data", type=str, default="./data/synthetic")
        parser.add_argument("--model", type=str, default="LSTM")
        parser.add_argument("--emsize", type=int, default=200)
        parser.add_argument("--nhid", type=int, default=200)
        parser.add_argument("--nlayers", type=int, default=2)
        parser.add_argument("--lr", type=float, default=20)
        parser.add_argument("--clip", type=float, default=0.25)
        parser.add_argument("--epochs", type=int, default=3)
        parser.add_argument("--batch_size", type=int, default=20)
        parser.add_argument("--eval_batch_size", type=int, default=10)
        parser.add_argument("--bptt", type=int, default=35)
        parser.add_argument("--dropout", type=float, default=0.2)
        parser.add_argument("--tied", action="store_true")
        parser.add_argument("--seed", type=int, default=1111)
        args = parser.parse_args(["--tied"])
        torch.manual_seed(args.seed)
        write_synthetic_corpus(args.data)
        corpus = Corpus(args.data)
        train_data = batchify(corpus.train, args.batch_size)
        val_data = batchify(corpus.valid, args.eval_batch_size)
        test_data = batchify(corpus.test, args.eval_batch_size)
        ntokens = len(corpus.dictionary)
        model = RNNModel(args.model, ntokens, args.emsize, args.nhid, args.nlayers, args.dropout, args.tied)
        criterion = nn.NLLLoss()
        lr, best_val_loss, log, vals = args.lr, None, [], []
        for epoch in range(1, args.epochs + 1):
            train(model, train_data, args, ntokens, criterion, lr, log)
            val_loss = evaluate(model, val_data, args, ntokens, criterion)
            vals.append(val_loss)
            if not best_val_loss or val_loss < best_val_loss:
                best_val_loss = val_loss
            else:
                lr /= 4.0                # anneal the learning rate: no improvement on validation
        test_loss = evaluate(model, test_data, args, ntokens, criterion)
        report(losses=hexes(log), val=hexes(vals), test=hexes([test_loss]), lr=hexes([lr]),
               ppl=math.exp(test_loss), ntokens=ntokens, state=digest(model.state_dict()),
               pages=sorted({where(p) for p in model.parameters()} |
                            {where(p.grad) for p in model.parameters()}))


    if __name__ == "__main__":
        main()
"""


def test_word_language_model_example_style_script(pools, twin):
    """Three epochs (54 steps) of a 2-layer LSTM with tied weights over a synthetic corpus (200
    words, bigram sentences): truncated BPTT of 35, clip_grad_norm_ 0.25, SGD by hand at lr 20,
    annealed when validation does not improve. Proves: every step's loss, the validation and test
    losses, the final learning rate and the trained parameters equal to the default's; the model
    learned (validation loss falls every epoch, test perplexity below the vocabulary size, which a
    uniform guess would score); parameters and gradients on 2 MiB pages in the allocator run, not
    in the default's."""
    pools.ensure_free("2M", 128)
    default, ours = twin.both(WORD_LM, timeout=240)
    assert len(ours["losses"]) == 54 and ours["ntokens"] > 150
    vals = [float.fromhex(v) for v in ours["val"]]
    assert vals[0] > vals[1] > vals[2] and ours["ppl"] < ours["ntokens"], (vals, ours["ppl"])
    for key in ("losses", "val", "test", "lr", "state"):
        assert ours[key] == default[key], key
    assert ours["pages"] == ["2M"] and "2M" not in default["pages"]
