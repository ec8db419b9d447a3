fn main() {
    fuse_ema::signals::install();
    std::process::exit(fuse_ema::cli::run());
}
