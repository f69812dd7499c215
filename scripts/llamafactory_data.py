"""LLaMA-Factory's SFT data path, as `autotp train --llamafactory sft.yaml` runs it (LLaMA-Factory 0.9.3,
the release that supports transformers 4.51.3): dataset_info.json, the alpaca and sharegpt converters,
the chat template, cutoff_len and the prompt mask. Used through tokenize_data.py:

    .venv/bin/python scripts/tokenize_data.py --llamafactory-dataset alpaca_demo,chats --dataset-dir data \\
        --template qwen --cutoff-len 2048 --tokenizer HF_MODEL_DIR --out sft.tokens [--max-samples N] [--train-on-prompt]

What it does, in LLaMA-Factory's words (data/parser.py, converter.py, template.py, processor/supervised.py):
  - dataset_info.json maps each name to {file_name, formatting: alpaca|sharegpt, columns, tags}; with
    "columns" (or "tags") given, a column (tag) it does not list is None, as DatasetAttr.join sets it.
  - alpaca: history pairs, then the user turn instruction + "\\n" + input (the non-empty ones), then the
    output; the system column only when mapped. sharegpt: a first message with the system tag is the
    system prompt; turns must alternate user / assistant tags and be even in number, else the example
    is dropped (LLaMA-Factory drops it with a warning; counted here).
  - each message is encoded on its own with the template's slots (each slot string through
    tokenizer.encode(add_special_tokens=False); {bos_token} / {eos_token} as ids), the first with the
    template's prefix and system (the example's, or the template's default system).
  - cutoff_len: pairs (user, assistant) in order, each cut by infer_seqlen to what is left.
  - labels: the assistant messages as the template writes them (e.g. "reply<|im_end|>\\n"); the user
    side -100 unless train_on_prompt.
  - the tokenizer is fixed as Template.fix_special_tokens does (replace_eos: the template's first stop
    word becomes EOS; pad = EOS when the tokenizer has none).
Templates: see TEMPLATES; any other name is refused. Tool / function turns, images, ranking data,
remote datasets and num_samples are refused with the dataset named; nothing is silently skipped except
what LLaMA-Factory itself drops.
"""
import json
import os
from dataclasses import dataclass, field

from tokenize_data import fail, read_records, write_v2

IGNORE = -100
BOS, EOS = ("bos_token",), ("eos_token",)  # LLaMA-Factory's {"bos_token"} / {"eos_token"} slots
CHATML_USER = "<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"
CHATML_ASSISTANT = "{{content}}<|im_end|>\n"
CHATML_SYSTEM = "<|im_start|>system\n{{content}}<|im_end|>\n"


@dataclass
class Template:
    user: list
    assistant: list
    system: list
    prefix: list = field(default_factory=list)
    default_system: str = ""
    stop_words: list = field(default_factory=list)
    replace_eos: bool = False


# LLaMA-Factory 0.9.3's data/template.py, slot for slot (register_template's defaults: user and system
# "{{content}}", assistant "{{content}}" + eos).
TEMPLATES = {
    "empty": Template(user=["{{content}}"], assistant=["{{content}}"], system=["{{content}}"]),
    "default": Template(user=["Human: {{content}}", EOS, "\nAssistant:"], assistant=["{{content}}", EOS, "\n"],
                        system=["System: {{content}}", EOS, "\n"]),
    "chatml": Template(user=[CHATML_USER], assistant=[CHATML_ASSISTANT], system=[CHATML_SYSTEM],
                       stop_words=["<|im_end|>", "<|im_start|>"], replace_eos=True),
    "qwen": Template(user=[CHATML_USER], assistant=[CHATML_ASSISTANT], system=[CHATML_SYSTEM],
                     default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
                     stop_words=["<|im_end|>"], replace_eos=True),
    "smollm": Template(user=[CHATML_USER], assistant=[CHATML_ASSISTANT], system=[CHATML_SYSTEM], stop_words=["<|im_end|>"]),
    "smollm2": Template(user=[CHATML_USER], assistant=[CHATML_ASSISTANT], system=[CHATML_SYSTEM],
                        default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face.",
                        stop_words=["<|im_end|>"]),
    "llama3": Template(
        user=["<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"],
        assistant=["{{content}}<|eot_id|>"],
        system=["<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>"],
        prefix=[BOS], stop_words=["<|eot_id|>", "<|eom_id|>"], replace_eos=True),
}

REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
UNSUPPORTED_COLUMNS = ("tools", "images", "videos", "audios", "chosen", "rejected", "kto_tag")
TAGS = ("role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")
ALPACA_DEFAULTS = {"prompt": "instruction", "query": "input", "response": "output", "history": None, "system": None}
SHAREGPT_DEFAULTS = {"messages": "conversations", "system": None}
TAG_DEFAULTS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}


def dataset_attrs(name, info, dataset_dir):
    """One dataset_info.json entry as DatasetAttr holds it; refuses what autotp does not read."""
    where = f"{os.path.join(dataset_dir, 'dataset_info.json')}: dataset \"{name}\""
    if name not in info:
        fail(f"{where}: not defined there (defined: {', '.join(sorted(info)) or 'none'})")
    entry = info[name]
    for key in REMOTE_KEYS:
        if key in entry:
            fail(f"{where}: {key}: autotp reads local files only; download the data into {dataset_dir} and give file_name")
    if "file_name" not in entry:
        fail(f"{where}: no file_name")
    fmt = entry.get("formatting", "alpaca")
    if fmt not in ("alpaca", "sharegpt"):
        fail(f"{where}: formatting {fmt}: autotp reads alpaca and sharegpt")
    if entry.get("ranking", False):
        fail(f"{where}: ranking: preference data is for stage dpo/rm/kto; autotp trains stage sft")
    for key in ("subset", "folder", "num_samples"):
        if entry.get(key) is not None:
            why = ("LLaMA-Factory draws them with an unseeded np.random.permutation, which no run can repeat"
                   if key == "num_samples" else "autotp reads one local JSON / JSONL file")
            fail(f"{where}: {key}: not supported ({why}); remove it, or use max_samples in the YAML")
    if entry.get("split", "train") != "train":
        fail(f"{where}: split {entry['split']}: a local JSON file has only the train split")
    path = os.path.join(dataset_dir, entry["file_name"])
    if not os.path.isfile(path):
        fail(f"{where}: {path}: no such file" + (" (a folder: autotp reads one file per dataset)" if os.path.isdir(path) else ""))
    if os.path.splitext(path)[1] not in (".json", ".jsonl"):
        fail(f"{where}: {path}: autotp reads .json and .jsonl files")
    attrs = dict(ALPACA_DEFAULTS if fmt == "alpaca" else SHAREGPT_DEFAULTS)
    if "columns" in entry:  # DatasetAttr.join: every column it names, None where not given
        attrs = {k: entry["columns"].get(k) for k in attrs}
        for key in UNSUPPORTED_COLUMNS:
            if entry["columns"].get(key):
                fail(f"{where}: columns.{key}: autotp trains on text conversations without tools, media or preference pairs")
    tags = dict(TAG_DEFAULTS)
    if "tags" in entry:
        tags = {k: entry["tags"].get(k) for k in TAGS}
    return {"name": name, "path": path, "formatting": fmt, "columns": attrs, "tags": tags}


def convert_alpaca(rec, cols):
    """AlpacaDatasetConverter: (prompt messages, response messages, system)."""
    prompt = []
    if cols["history"] and isinstance(rec.get(cols["history"]), list):
        for old_prompt, old_response in rec[cols["history"]]:
            prompt += [{"role": "user", "content": old_prompt}, {"role": "assistant", "content": old_response}]
    query = [rec[c] for c in (cols["prompt"], cols["query"]) if c and rec.get(c)]
    prompt.append({"role": "user", "content": "\n".join(query)})
    response = [{"role": "assistant", "content": rec[cols["response"]]}] \
        if cols["response"] and isinstance(rec.get(cols["response"]), str) else []
    return prompt, response, (rec.get(cols["system"]) if cols["system"] else "")


def convert_sharegpt(rec, cols, tags, where):
    """SharegptDatasetConverter; a tool turn is refused (LLaMA-Factory renders it with its tool formats)."""
    messages = rec.get(cols["messages"]) if cols["messages"] else None
    if not isinstance(messages, list):
        fail(f"{where}: no list of messages in column \"{cols['messages']}\"")
    role, content = tags["role_tag"], tags["content_tag"]
    if tags["system_tag"] and messages and isinstance(messages[0], dict) and messages[0].get(role) == tags["system_tag"]:
        system, messages = messages[0].get(content), messages[1:]
    else:
        system = rec.get(cols["system"]) if cols["system"] else ""
    accept = ((tags["user_tag"], tags["observation_tag"]), (tags["assistant_tag"], tags["function_tag"]))
    names = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant"}
    aligned = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            fail(f"{where}: message {i + 1} is not a JSON object")
        if m.get(role) not in accept[i % 2]:
            return [], [], system  # broken: LLaMA-Factory skips the example
        if m.get(role) in (tags["observation_tag"], tags["function_tag"]):
            fail(f"{where}: a \"{m.get(role)}\" turn; autotp's templates render system, user and assistant turns only")
        aligned.append({"role": names[m[role]], "content": m.get(content)})
    if len(aligned) % 2 != 0:
        return [], [], system
    return aligned[:-1], aligned[-1:], system


def fix_special_tokens(tok, template):
    """Template.fix_special_tokens: the tokenizer LLaMA-Factory encodes with."""
    stop = list(template.stop_words)
    if template.replace_eos:
        if tok.eos_token != stop[0]:
            tok.add_special_tokens({"eos_token": stop[0]})
        stop = stop[1:]
    if tok.eos_token_id is None:
        tok.add_special_tokens({"eos_token": "<|endoftext|>"})
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if stop:
        tok.add_special_tokens(dict(additional_special_tokens=stop), replace_additional_special_tokens=False)


def slots_to_ids(tok, slots, content=None):
    """Template._convert_elements_to_ids of StringFormatter.apply(content=...)."""
    ids = []
    for slot in slots:
        if isinstance(slot, str):
            text = slot.replace("{{content}}", content, 1) if content is not None else slot
            if text:
                ids += tok.encode(text, add_special_tokens=False)
        elif slot == BOS and tok.bos_token_id is not None:
            ids.append(tok.bos_token_id)
        elif slot == EOS and tok.eos_token_id is not None:
            ids.append(tok.eos_token_id)
    return ids


def encode_messages(tok, template, messages, system):
    """Template._encode: one id list per message."""
    system = system or template.default_system
    out = []
    for i, m in enumerate(messages):
        ids = []
        if i == 0:
            ids += slots_to_ids(tok, template.prefix)
            if system:
                ids += slots_to_ids(tok, template.system, system)
        ids += slots_to_ids(tok, template.user if m["role"] == "user" else template.assistant, m["content"])
        out.append(ids)
    return out


def infer_seqlen(source_len, target_len, cutoff_len):
    """processor_utils.infer_seqlen."""
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    new_source_len = min(max(cutoff_len - new_target_len, 0), source_len)
    return new_source_len, new_target_len


def encode_example(tok, template, prompt, response, system, cutoff_len, train_on_prompt):
    """SupervisedDatasetProcessor._encode_data_example (no media, no efficient_eos, no mask_history):
    (input ids, labels, whether cutoff_len cut something)."""
    encoded = encode_messages(tok, template, prompt + response, system)
    input_ids, labels, total, cut = [], [], 0, False
    for k in range(0, len(encoded), 2):
        source, target = encoded[k], encoded[k + 1]
        if total >= cutoff_len:
            cut = True
            break
        source_len, target_len = infer_seqlen(len(source), len(target), cutoff_len - total)
        cut = cut or source_len < len(source) or target_len < len(target)
        source, target = source[:source_len], target[:target_len]
        total += source_len + target_len
        input_ids += source + target
        labels += (source if train_on_prompt else [IGNORE] * source_len) + target
    return input_ids, labels, cut


def tokenize(a):
    """tokenize_data.py --llamafactory-dataset: writes a.out (version 2: tokens, loss mask, examples)."""
    if a.template not in TEMPLATES:
        fail(f"template {a.template}: autotp renders LLaMA-Factory's {', '.join(TEMPLATES)}; pick the model's one of these")
    if not a.tokenizer:
        fail("--llamafactory-dataset needs --tokenizer (the model folder)")
    if a.cutoff_len <= 0:
        a.cutoff_len = 2048  # LLaMA-Factory's default
    if a.eval_split:
        fail("--eval-split is not read with --llamafactory-dataset (LLaMA-Factory's val_size is not implemented)")
    info_path = os.path.join(a.dataset_dir, "dataset_info.json")
    try:
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        fail(f"{info_path}: cannot read it ({e})")
    names = [n.strip() for n in a.llamafactory_dataset.split(",") if n.strip()]
    attrs = [dataset_attrs(n, info, a.dataset_dir) for n in names]
    examples, counts, dropped = [], {}, 0
    for at in attrs:
        records = read_records(at["path"])
        if a.max_samples:
            records = records[:a.max_samples]
        counts[at["name"]] = 0
        for n, rec in enumerate(records, 1):
            where = f"{at['path']}: record {n}"
            if at["formatting"] == "alpaca":
                prompt, response, system = convert_alpaca(rec, at["columns"])
            else:
                prompt, response, system = convert_sharegpt(rec, at["columns"], at["tags"], where)
            if len(prompt) % 2 != 1 or len(response) != 1:
                dropped += 1
                continue
            for m in prompt + response:
                if not isinstance(m["content"], str):
                    fail(f"{where}: a {m['role']} turn's content is not a string")
            examples.append((prompt, response, system))
            counts[at["name"]] += 1
    if not examples:
        fail(f"datasets {', '.join(names)}: no example left to train on")
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(a.tokenizer, use_fast=True, split_special_tokens=False,
                                                     padding_side="right")
    vocab = len(tok)
    template = TEMPLATES[a.template]
    if template.replace_eos and tok.convert_tokens_to_ids(template.stop_words[0]) in (None, tok.unk_token_id):
        fail(f"template {a.template}: its end of turn {template.stop_words[0]} is not a token of {a.tokenizer}; "
             "LLaMA-Factory would add it (resize_vocab), autotp does not resize the model: use the model's own template")
    fix_special_tokens(tok, template)
    ids, mask, offsets, cut = [], [], [0], 0
    for prompt, response, system in examples:
        x, labels, was_cut = encode_example(tok, template, prompt, response, system, a.cutoff_len, a.train_on_prompt)
        cut += was_cut
        ids += x
        mask += [1 if label != IGNORE else 0 for label in labels]
        offsets.append(len(ids))
    if ids and max(ids) >= vocab:
        fail(f"template {a.template} puts token {tok.convert_ids_to_tokens(max(ids))} into the data, which the tokenizer "
             f"of {a.tokenizer} does not have (LLaMA-Factory adds it and needs resize_vocab); use the model's own template")
    write_v2(a.out, ids, vocab, tok.pad_token_id, mask, offsets)
    notes = [f"{cut} cut to cutoff_len {a.cutoff_len}"]
    if dropped:
        notes.append(f"{dropped} dropped as LLaMA-Factory drops them (turns not alternating user/assistant, or no response)")
    print(f"wrote {a.out}: {len(examples)} examples ({', '.join(f'{k} {v}' for k, v in counts.items())}), {len(ids)} tokens "
          f"({sum(mask)} trained), template {a.template}, vocabulary {vocab}; {'; '.join(notes)}")
    return 0
