import type { Command } from 'commander'
import { configureServeCommand } from '../server/command'

/** `bslfs serve --listen HOST:PORT --device NAME=PATH ... [--token-file FILE]`: the block server. */
export function registerServe (program: Command): Command {
  return configureServeCommand(program.command('serve'))
}
