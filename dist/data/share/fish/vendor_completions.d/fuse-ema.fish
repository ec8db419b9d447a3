# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_fuse_ema_global_optspecs
    string join \n h/help V/version
end

function __fish_fuse_ema_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_fuse_ema_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_fuse_ema_using_subcommand
    set -l cmd (__fish_fuse_ema_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c fuse-ema -n "__fish_fuse_ema_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c fuse-ema -n "__fish_fuse_ema_needs_command" -s V -l version -d 'Print version'
complete -c fuse-ema -n "__fish_fuse_ema_needs_command" -f -a "inspect" -d 'Show what a checkpoint holds: format, entries, metadata, weight sets, EMA layout, globals'
complete -c fuse-ema -n "__fish_fuse_ema_needs_command" -f -a "fold" -d 'Write the EMA weights alone, under the model\'s own names (.safetensors or .pt)'
complete -c fuse-ema -n "__fish_fuse_ema_needs_command" -f -a "diff" -d 'Measure how far the EMA has drifted from the raw weights (or one checkpoint from another)'
complete -c fuse-ema -n "__fish_fuse_ema_needs_command" -f -a "export" -d 'Build an ONNX model from the checkpoint\'s own module tree, EMA weights folded in'
complete -c fuse-ema -n "__fish_fuse_ema_needs_command" -f -a "verify" -d 'Check an ONNX model against a checkpoint\'s EMA: outputs, and which weights it holds'
complete -c fuse-ema -n "__fish_fuse_ema_needs_command" -f -a "graft" -d 'Put a checkpoint\'s EMA into an ONNX model exported from its raw weights (any exporter, any architecture)'
complete -c fuse-ema -n "__fish_fuse_ema_needs_command" -f -a "average" -d 'Average several checkpoints: SWA / a model soup, a weighted average, or an EMA replayed over saved checkpoints'
complete -c fuse-ema -n "__fish_fuse_ema_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c fuse-ema -n "__fish_fuse_ema_needs_command" -f -a "man" -d 'Print the man page (roff), or write one page per command into a folder'
complete -c fuse-ema -n "__fish_fuse_ema_needs_command" -f -a "strip" -d 'Make a training checkpoint deployable: the EMA as the weights, training state dropped'
complete -c fuse-ema -n "__fish_fuse_ema_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand inspect" -l format -d 'Output format' -r -f -a "text\t'Readable text'
json\t'The report as JSON (docs/inspect-json.md); an array of reports for several files'
sarif\t'SARIF 2.1.0 for code scanning: one result per finding, at its file (docs/ci.md)'"
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand inspect" -l allow -d 'Also allow this global (repeatable): an exact `module.Name` (a class), `module.Name=ROLE` (class, namespace, enum, container, value, rebuild), or the classes of a package and its submodules, `mypkg.models.*`' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand inspect" -l json -d 'Print the report as JSON (schema: docs/inspect-json.md); the same as `--format json`'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand inspect" -s q -l quiet -d 'Print only the verdict lines of files with findings or errors (on stderr), no reports: what a pre-commit hook or a CI gate wants'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand inspect" -l tree -d 'Also print the module tree with classes'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand inspect" -l strict -d 'Refuse (exit 1, write nothing) when any global is outside the allow-list, used against its role, dotted, or part of a gadget chain (docs/security.md)'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand inspect" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand fold" -s o -l output -d 'Output: `.safetensors`, or `.pt` / `.pth` / `.bin` for a torch state dict' -r -F
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand fold" -l ema -d 'Take the EMA from this weight set (`state_dict_ema`, `ema.module`) or key prefix (`model_ema.`)' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand fold" -l raw -d 'Take the raw weights from this weight set or key prefix' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand fold" -l dtype -d 'dtype of floating tensors: keep, f32, f16, bf16' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand fold" -l max-shard-size -d 'Write Hugging Face-style shards of at most this size (e.g. 2GB, 500MB) plus an index (safetensors only)' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand fold" -l allow -d 'Also allow this global (repeatable): an exact `module.Name` (a class), `module.Name=ROLE` (class, namespace, enum, container, value, rebuild), or the classes of a package and its submodules, `mypkg.models.*`' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand fold" -l allow-missing -d 'Fold even when names are missing on either side or shapes differ (missing ones come from the raw model)'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand fold" -l json -d 'Print what was done as JSON'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand fold" -l strict -d 'Refuse (exit 1, write nothing) when any global is outside the allow-list, used against its role, dotted, or part of a gadget chain (docs/security.md)'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand fold" -s h -l help -d 'Print help'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand diff" -l against -d 'Compare the EMA of FILE with the EMA of this checkpoint instead' -r -F
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand diff" -l ema -d 'Take the EMA from this weight set (`state_dict_ema`, `ema.module`) or key prefix (`model_ema.`)' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand diff" -l raw -d 'Take the raw weights from this weight set or key prefix' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand diff" -l plot -d 'Write an SVG chart of relative drift by layer and of the most drifted tensors' -r -F
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand diff" -l top -d 'How many of the most drifted tensors to list' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand diff" -l fail-above -d 'Exit 1 when any tensor\'s relative L2 drift is above this' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand diff" -l json -d 'Print the full comparison as JSON'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand diff" -s h -l help -d 'Print help'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -s o -l output -d 'Output .onnx file' -r -F
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l imgsz -d 'Input size: N, or H,W. Default: the training size' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l batch -d 'Batch size of the input' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l conf -d '--nms: keep detections whose best class score is above this' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l iou -d '--nms: suppress a box overlapping a better one by more than this IoU' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l max-det -d 'Detection rows per image of the --nms output, or rows kept by --end2end (clamped to the number of anchors there, as Ultralytics does)' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l opset -d 'ONNX opset (13–21; 17 suits TensorRT 8.6+)' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l source -d 'Which weights: ema (default) or raw' -r -f -a "ema\t''
raw\t''"
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l parity-samples -d 'Seeded uniform [0,1) input batches to compare on' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l seed -d 'The first seeded batch\'s seed (the others follow it). verify draws a fresh one per run unless given, so an ONNX cannot recognise its inputs, and reports it so a failure can be rerun; export\'s own check uses 0' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l parity-budget -d 'Stop checking further seeded batches once parity has run this long (the first batch always runs; the report says how many were checked; no default: every batch runs), e.g. `--parity-samples 8 --parity-budget 30`' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l parity-input -d 'Compare on this image (jpg/png), letterboxed as Ultralytics does, instead of random inputs' -r -F
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l golden -d 'Compare with a golden .npz holding `images` and PyTorch\'s `output0`, `output1`, … instead' -r -F
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l atol -d 'Absolute tolerance (default 1e-4; 1e-2 for f16 models)' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l rtol -d 'Tolerance relative to the largest reference magnitude in each channel (default 1e-3; 1e-2 for f16)' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l runtime -d 'Runtime that runs the ONNX: ort (ONNX Runtime) or tract; auto takes ONNX Runtime when found' -r -f -a "auto\t''
ort\t''
tract\t''"
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l ep -d 'ONNX Runtime execution provider (fails loudly if the loaded ONNX Runtime lacks it)' -r -f -a "cuda\t''
tensorrt\t''"
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l report -d 'Write the parity report as JSON to this file' -r -F
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l allow -d 'Also allow this global (repeatable): an exact `module.Name` (a class), `module.Name=ROLE` (class, namespace, enum, container, value, rebuild), or the classes of a package and its submodules, `mypkg.models.*`' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l dynamic -d 'Dynamic batch, height and width (anchors computed in the graph), as Ultralytics\' `dynamic=True`'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l end2end -d 'NMS-free output of YOLOv10 / YOLO26 heads, as `yolo export nms=False`: the one-to-one branches, top-k inside the graph, output0 (B, max-det, 6 + extra): x1 y1 x2 y2 score class (OBB: cx cy w h score class angle), then mask coefficients or keypoints'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l nms -d 'Embed NMS in the graph (detect, segment, pose, obb), as `yolo export nms=True`: output0 becomes (B, max-det, 6 + extra) rows, x1 y1 x2 y2 score class then masks or keypoints (obb: cx cy w h score class angle)'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l agnostic -d '--nms: one NMS across classes instead of one per class'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l half -d 'f16 weights and compute, f32 input and output'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l no-parity -d 'Skip the parity check'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l external-data -d 'Write the weights to OUT.onnx.data beside the model (automatic above 1.9 GB)'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l json -d 'Print what was done as JSON'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -l strict -d 'Refuse (exit 1, write nothing) when any global is outside the allow-list, used against its role, dotted, or part of a gadget chain (docs/security.md)'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand export" -s h -l help -d 'Print help'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand verify" -l checkpoint -d 'The training checkpoint it should come from' -r -F
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand verify" -l parity-samples -d 'Seeded uniform [0,1) input batches to compare on' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand verify" -l seed -d 'The first seeded batch\'s seed (the others follow it). verify draws a fresh one per run unless given, so an ONNX cannot recognise its inputs, and reports it so a failure can be rerun; export\'s own check uses 0' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand verify" -l parity-budget -d 'Stop checking further seeded batches once parity has run this long (the first batch always runs; the report says how many were checked; no default: every batch runs), e.g. `--parity-samples 8 --parity-budget 30`' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand verify" -l parity-input -d 'Compare on this image (jpg/png), letterboxed as Ultralytics does, instead of random inputs' -r -F
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand verify" -l golden -d 'Compare with a golden .npz holding `images` and PyTorch\'s `output0`, `output1`, … instead' -r -F
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand verify" -l atol -d 'Absolute tolerance (default 1e-4; 1e-2 for f16 models)' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand verify" -l rtol -d 'Tolerance relative to the largest reference magnitude in each channel (default 1e-3; 1e-2 for f16)' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand verify" -l runtime -d 'Runtime that runs the ONNX: ort (ONNX Runtime) or tract; auto takes ONNX Runtime when found' -r -f -a "auto\t''
ort\t''
tract\t''"
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand verify" -l ep -d 'ONNX Runtime execution provider (fails loudly if the loaded ONNX Runtime lacks it)' -r -f -a "cuda\t''
tensorrt\t''"
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand verify" -l report -d 'Write the parity report as JSON to this file' -r -F
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand verify" -l json -d 'Print the report as JSON'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand verify" -s h -l help -d 'Print help'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand graft" -l checkpoint -d 'The training checkpoint holding the raw weights and their EMA' -r -F
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand graft" -s o -l output -d 'Output .onnx file (never one of the inputs; written whole or not at all)' -r -F
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand graft" -l ema -d 'Take the EMA from this weight set (`state_dict_ema`, `ema.module`) or key prefix (`model_ema.`)' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand graft" -l raw -d 'Take the raw weights from this weight set or key prefix' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand graft" -l runtime -d 'Runtime for the drift run: ort (ONNX Runtime) or tract; auto takes ONNX Runtime when found' -r -f -a "auto\t''
ort\t''
tract\t''"
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand graft" -l input-shape -d 'Shape of a dynamic input for the drift run, per input in order (e.g. 1,3,224,224)' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand graft" -l allow -d 'Also allow this global (repeatable): an exact `module.Name` (a class), `module.Name=ROLE` (class, namespace, enum, container, value, rebuild), or the classes of a package and its submodules, `mypkg.models.*`' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand graft" -l allow-unmatched -d 'Leave initializers that look like weights but match nothing as they are, instead of failing'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand graft" -l no-drift -d 'Do not run the two models to measure output drift'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand graft" -l all -d 'List constants too in the text report'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand graft" -l json -d 'Print the report as JSON'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand graft" -l strict -d 'Refuse (exit 1, write nothing) when any global is outside the allow-list, used against its role, dotted, or part of a gadget chain (docs/security.md)'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand graft" -s h -l help -d 'Print help'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand average" -s o -l output -d 'Output: `.safetensors`, or `.pt` / `.pth` / `.bin` for a torch state dict' -r -F
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand average" -l weights -d 'One weight per checkpoint, normalised by their sum (`0.7,0.3`)' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand average" -l ema-decay -d 'Replay an EMA with this per-step decay over the checkpoints in order' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand average" -l every -d 'With --ema-decay: the checkpoints were saved this many steps apart' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand average" -l source -d 'Which weights of each checkpoint: ema (its EMA where it has one) or raw' -r -f -a "ema\t'The EMA where a checkpoint has one'
raw\t'The raw (trained) weights'"
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand average" -l dtype -d 'dtype of floating tensors written: keep, f32, f16, bf16' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand average" -l allow -d 'Also allow this global (repeatable): an exact `module.Name` (a class), `module.Name=ROLE` (class, namespace, enum, container, value, rebuild), or the classes of a package and its submodules, `mypkg.models.*`' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand average" -l uniform -d 'Equal weights (the default): SWA, a uniform model soup'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand average" -l strip -d 'Write a deployable Ultralytics `.pt`: the last checkpoint stripped as `fuse-ema strip` strips it (f16 unless `--dtype f32`), with the average as its model'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand average" -l json -d 'Print what was done as JSON'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand average" -l strict -d 'Refuse (exit 1, write nothing) when any global is outside the allow-list, used against its role, dotted, or part of a gadget chain (docs/security.md)'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand average" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand completions" -s h -l help -d 'Print help'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand man" -l dir -d 'Write fuse-ema.1 and fuse-ema-<command>.1 into this folder instead of printing fuse-ema.1' -r -F
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand man" -s h -l help -d 'Print help'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand strip" -s o -l output -d 'Output .pt / .pth / .ckpt file' -r -F
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand strip" -l dtype -d 'dtype of the model\'s floating tensors (Ultralytics): f16 (default, as strip_optimizer) or f32' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand strip" -l allow -d 'Also allow this global (repeatable): an exact `module.Name` (a class), `module.Name=ROLE` (class, namespace, enum, container, value, rebuild), or the classes of a package and its submodules, `mypkg.models.*`' -r
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand strip" -l keep-structure -d 'Keep the container (timm, mmengine, Lightning) and put the EMA where the framework loads weights from; optimizer and scheduler state are dropped'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand strip" -l keep-optimizer -d 'With --keep-structure, keep optimizer and scheduler state'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand strip" -l json -d 'Print what was done as JSON'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand strip" -l strict -d 'Refuse (exit 1, write nothing) when any global is outside the allow-list, used against its role, dotted, or part of a gadget chain (docs/security.md)'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand strip" -s h -l help -d 'Print help'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand help; and not __fish_seen_subcommand_from inspect fold diff export verify graft average completions man strip help" -f -a "inspect" -d 'Show what a checkpoint holds: format, entries, metadata, weight sets, EMA layout, globals'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand help; and not __fish_seen_subcommand_from inspect fold diff export verify graft average completions man strip help" -f -a "fold" -d 'Write the EMA weights alone, under the model\'s own names (.safetensors or .pt)'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand help; and not __fish_seen_subcommand_from inspect fold diff export verify graft average completions man strip help" -f -a "diff" -d 'Measure how far the EMA has drifted from the raw weights (or one checkpoint from another)'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand help; and not __fish_seen_subcommand_from inspect fold diff export verify graft average completions man strip help" -f -a "export" -d 'Build an ONNX model from the checkpoint\'s own module tree, EMA weights folded in'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand help; and not __fish_seen_subcommand_from inspect fold diff export verify graft average completions man strip help" -f -a "verify" -d 'Check an ONNX model against a checkpoint\'s EMA: outputs, and which weights it holds'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand help; and not __fish_seen_subcommand_from inspect fold diff export verify graft average completions man strip help" -f -a "graft" -d 'Put a checkpoint\'s EMA into an ONNX model exported from its raw weights (any exporter, any architecture)'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand help; and not __fish_seen_subcommand_from inspect fold diff export verify graft average completions man strip help" -f -a "average" -d 'Average several checkpoints: SWA / a model soup, a weighted average, or an EMA replayed over saved checkpoints'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand help; and not __fish_seen_subcommand_from inspect fold diff export verify graft average completions man strip help" -f -a "completions" -d 'Print a shell completion script'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand help; and not __fish_seen_subcommand_from inspect fold diff export verify graft average completions man strip help" -f -a "man" -d 'Print the man page (roff), or write one page per command into a folder'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand help; and not __fish_seen_subcommand_from inspect fold diff export verify graft average completions man strip help" -f -a "strip" -d 'Make a training checkpoint deployable: the EMA as the weights, training state dropped'
complete -c fuse-ema -n "__fish_fuse_ema_using_subcommand help; and not __fish_seen_subcommand_from inspect fold diff export verify graft average completions man strip help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
