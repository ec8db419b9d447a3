fn main() {
    std::process::exit(fuse_ema::cli::run());
}
